"""A REST upstream written with FastAPI, whose OpenAPI 3.1 document the framework generates (GET /openapi.json).

  python rest_api.py --port 0
prints `READY <port>`. It keeps a log of every request it receives (GET /_calls, not in the document), so
tests can prove what reached it and what did not.

  GET    /items?limit=N&tag=T...   list items
  GET    /items/{item_id}          one item (404 if absent)
  POST   /items                    create (JSON body: name, price, tags)
  DELETE /items/{item_id}          remove
  GET    /echo/{value}             the raw path as received (proves the gateway's encoding)
  GET    /broken                   500 with an HTML body
  GET    /moved                    307 to another host (must not be followed)
  GET    /relocated                307 to /items?limit=1 (same origin: followed when configured)
  GET    /loop                     302 to itself (a redirect loop)
  GET    /huge                     a 20 MB JSON body
  GET    /whoami                   the SHA-256 of the X-Shop-Key it got (security scheme: apiKey header)
  GET    /leaky                    401 echoing the X-Shop-Key it got (as a careless API does)
"""

import argparse
import hashlib
import socket

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import APIKeyHeader
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

app = FastAPI(title="Shop", version="1.0.0")
calls: list[dict] = []
items: dict[int, dict] = {1: {"id": 1, "name": "lamp", "price": 30, "tags": ["home"]}}


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    price: int = Field(ge=0)
    tags: list[str] = []


class Item(NewItem):
    id: int


@app.middleware("http")
async def log_calls(request: Request, call_next):
    if request.url.path != "/_calls":
        calls.append({
            "method": request.method,
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "query": request.url.query,
            "authorization": request.headers.get("authorization"),
        })
    return await call_next(request)


@app.get("/items", tags=["items"], summary="List items")
def list_items(limit: int = Query(10, ge=1, le=100), tag: list[str] = Query([])) -> list[Item]:
    out = [i for i in items.values() if not tag or set(tag) & set(i["tags"])]
    return [Item(**i) for i in out[:limit]]


@app.get("/items/{item_id}", tags=["items"], summary="Get one item")
def get_item(item_id: int) -> Item:
    if item_id not in items:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return Item(**items[item_id])


@app.post("/items", tags=["items"], summary="Create an item", status_code=201)
def create_item(body: NewItem) -> Item:
    new_id = max(items, default=0) + 1
    items[new_id] = {"id": new_id, **body.model_dump()}
    return Item(**items[new_id])


@app.delete("/items/{item_id}", tags=["items"], summary="Delete an item")
def delete_item(item_id: int) -> dict:
    items.pop(item_id, None)
    return {"deleted": item_id}


@app.get("/echo/{value}", tags=["debug"], summary="Echo the raw path")
def echo(value: str, request: Request) -> dict:
    return {"value": value, "raw_path": request.scope.get("raw_path", b"").decode("latin-1")}


@app.get("/broken", tags=["debug"], summary="Always fails")
def broken() -> HTMLResponse:
    return HTMLResponse("<html><body><h1>Internal Server Error</h1>" + "x" * 5000 + "</body></html>", status_code=500)


@app.get("/moved", tags=["debug"], summary="Redirects elsewhere")
def moved() -> RedirectResponse:
    return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=307)


@app.get("/relocated", tags=["debug"], summary="Redirects to the item list")
def relocated() -> RedirectResponse:
    return RedirectResponse("/items?limit=1", status_code=307)


@app.get("/loop", tags=["debug"], summary="Redirects to itself")
def loop() -> RedirectResponse:
    return RedirectResponse("loop", status_code=302)


@app.get("/huge", tags=["debug"], summary="A very large body")
def huge() -> Response:
    return Response(b'{"x": "' + b"a" * (20 << 20) + b'"}', media_type="application/json")


shop_key = APIKeyHeader(name="X-Shop-Key", auto_error=False)


@app.get("/whoami", tags=["auth"], summary="Which key the request carried")
def whoami(key: str | None = Depends(shop_key)) -> dict:
    if key is None:
        raise HTTPException(status_code=401, detail="no key")
    return {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}


@app.get("/leaky", tags=["auth"], summary="Refuses, echoing the key")
def leaky(key: str | None = Depends(shop_key)) -> dict:
    raise HTTPException(status_code=401, detail=f"key {key} is not accepted here")


@app.get("/_calls", include_in_schema=False)
def get_calls() -> list[dict]:
    return calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    p.add_argument("--tls-key", help="... and this key")
    args = p.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    # Listening before READY: connections made while uvicorn starts wait in the backlog, not refused.
    sock.listen(128)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key} if args.tls_cert else {}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **tls))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
