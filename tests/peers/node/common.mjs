// Helpers shared by the TypeScript test peers (no SDK imports here).
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

export const REVISIONS = ['2025-11-25', '2026-07-28'];

/** Parse server CLI flags: --port N --name NAME [--stateless] [--json-response] [...extra]. */
export function parseServerArgs(extraOptions = {}) {
    const { values } = parseArgs({
        options: {
            port: { type: 'string', default: '0' },
            name: { type: 'string', default: 'ts-server' },
            stateless: { type: 'boolean', default: false },
            'json-response': { type: 'boolean', default: false },
            path: { type: 'string', default: '/mcp' },
            verbose: { type: 'boolean', default: false },
            help: { type: 'boolean', default: false },
            ...extraOptions
        },
        strict: true,
        allowPositionals: false
    });
    values.port = Number.parseInt(values.port, 10);
    if (!Number.isInteger(values.port) || values.port < 0 || values.port > 65535) {
        throw new Error(`bad --port ${values.port}`);
    }
    return values;
}

/** Read a Node IncomingMessage body fully (Buffer). */
export function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        req.on('data', c => chunks.push(c));
        req.on('end', () => resolve(Buffer.concat(chunks)));
        req.on('error', reject);
    });
}

/** Listen on 127.0.0.1:port and print `READY <port>` on stdout once bound. */
export function listenAndAnnounce(httpServer, port) {
    httpServer.listen(port, '127.0.0.1', () => {
        const actual = httpServer.address().port;
        process.stdout.write(`READY ${actual}\n`);
    });
    const shutdown = () => {
        httpServer.close();
        httpServer.closeAllConnections?.();
        setTimeout(() => process.exit(0), 200).unref();
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
}

/**
 * Serve `handler(req, res)` (a promise) at `path` only (404 elsewhere), logging each request with `vlog`
 * and answering 500 when the handler throws; then listen and announce as `listenAndAnnounce` does.
 */
export function serveAt(handler, { path, port, label, vlog }) {
    const httpServer = createServer((req, res) => {
        const url = new URL(req.url, 'http://127.0.0.1');
        if (url.pathname !== path) {
            res.writeHead(404).end();
            return;
        }
        vlog(req.method, JSON.stringify(req.headers));
        handler(req, res).catch(err => {
            console.error(`[${label}] request failed:`, err);
            if (!res.headersSent) res.writeHead(500).end();
            else res.end();
        });
    });
    listenAndAnnounce(httpServer, port);
}

export const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Parse client CLI: URL --revision R --scenario S [--tool T --args JSON --n N --timeout S --prefix P].
 * --prefix is prepended to the tool names the progress and session-delete scenarios call (a gateway's
 * namespace, e.g. `alpha__`). */
export function parseClientArgs(revisions = REVISIONS) {
    const { values, positionals } = parseArgs({
        options: {
            revision: { type: 'string' },
            scenario: { type: 'string' },
            tool: { type: 'string' },
            prefix: { type: 'string', default: '' },
            args: { type: 'string' },
            n: { type: 'string', default: '3' },
            connect: { type: 'string', default: 'pin' },
            'tools-only': { type: 'boolean', default: false },
            timeout: { type: 'string', default: '30' }
        },
        strict: true,
        allowPositionals: true
    });
    const usage = msg => {
        process.stderr.write(`error: ${msg}\n`);
        process.exit(2);
    };
    if (positionals.length !== 1) usage('exactly one URL argument is required');
    if (!revisions.includes(values.revision)) usage(`--revision must be one of ${revisions.join(', ')}`);
    if (!['list', 'call', 'progress', 'session-delete'].includes(values.scenario)) {
        usage('--scenario must be one of list, call, progress, session-delete');
    }
    return {
        url: positionals[0],
        revision: values.revision,
        scenario: values.scenario,
        tool: values.tool,
        prefix: values.prefix,
        args: values.args ? JSON.parse(values.args) : {},
        n: Number.parseInt(values.n, 10),
        connect: values.connect,
        toolsOnly: values['tools-only'],
        timeoutMs: Number.parseFloat(values.timeout) * 1000
    };
}

export class Fail extends Error {
    name = 'Fail';
}

/** Wrap fetch to record every HTTP exchange the SDK transport makes (same shape as py_client's "http"). */
export function recordingFetch(records, sessionIds) {
    return async (input, init = {}) => {
        const method = (init.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
        const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
        const rec = { method };
        if (typeof init.body === 'string') {
            try {
                const body = JSON.parse(init.body);
                if (body && !Array.isArray(body)) rec.rpc = body.method ?? '(response)';
            } catch {
                /* not JSON */
            }
        }
        const pv = headers.get('mcp-protocol-version');
        if (pv) rec['mcp-protocol-version'] = pv;
        const sid = headers.get('mcp-session-id');
        if (sid) rec['mcp-session-id'] = sid;
        records.push(rec);
        // The gateway's agent API key, when the test runs against a governed gateway.
        if (process.env.PORTCULLIS_BEARER && !headers.has('authorization')) {
            headers.set('authorization', `Bearer ${process.env.PORTCULLIS_BEARER}`);
            init = { ...init, headers };
        }
        const res = await fetch(input, init);
        rec.status = res.status;
        const ct = res.headers.get('content-type');
        if (ct) rec['content-type'] = ct.split(';')[0];
        const rsid = res.headers.get('mcp-session-id');
        if (rsid) {
            rec['response-session-id'] = rsid;
            if (!sessionIds.includes(rsid)) sessionIds.push(rsid);
        }
        return res;
    };
}

export function callResult(res) {
    const content = res.content ?? [];
    return {
        text: content
            .filter(c => c.type === 'text')
            .map(c => c.text)
            .join(''),
        content,
        structured: res.structuredContent ?? null,
        is_error: Boolean(res.isError)
    };
}

/** POST a raw tools/list with a (deleted) session id; returns the HTTP status. */
export async function probeDeletedSession(url, sid) {
    const res = await fetch(url, {
        method: 'POST',
        headers: {
            accept: 'application/json, text/event-stream',
            'content-type': 'application/json',
            'mcp-session-id': sid,
            'mcp-protocol-version': '2025-11-25',
            ...(process.env.PORTCULLIS_BEARER ? { authorization: `Bearer ${process.env.PORTCULLIS_BEARER}` } : {})
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'tools/list', params: {} })
    });
    await res.body?.cancel();
    return res.status;
}

/** Run `main(out)` under a deadline; print one JSON line and exit 0/1. */
export async function runClient(out, timeoutMs, main) {
    let timer;
    try {
        await Promise.race([
            main(out),
            new Promise((_, reject) => {
                timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
            })
        ]);
        clearTimeout(timer);
        out.ok = true;
        process.stdout.write(JSON.stringify(out) + '\n');
        process.exit(0);
    } catch (err) {
        clearTimeout(timer);
        if (!(err instanceof Fail)) process.stderr.write(`${err?.stack ?? err}\n`);
        out.ok = false;
        out.error = `${err?.name ?? 'Error'}: ${err?.message ?? err}`;
        process.stdout.write(JSON.stringify(out) + '\n');
        process.exit(1);
    }
}
