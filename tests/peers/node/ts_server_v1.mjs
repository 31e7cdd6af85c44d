#!/usr/bin/env node
// Upstream MCP test server on the official TypeScript SDK v1 (@modelcontextprotocol/sdk 1.32.2),
// StreamableHTTPServerTransport on plain node:http at http://127.0.0.1:PORT/mcp.
// Protocol: 2025-11-25 (and older handshake revisions) only; SDK 1.x has no 2026-07-28 support.
//
//   node ts_server_v1.mjs --port 0 --name NAME [--stateless] [--json-response]
//
// Default is stateful: one McpServer + transport per Mcp-Session-Id (GET stream and DELETE
// supported). --stateless: a fresh server+transport per POST, no session id (GET/DELETE -> 405).
// --json-response: enableJsonResponse (application/json instead of SSE; progress/log
// notifications are then not delivered on the POST).
// Prints `READY <port>` on stdout once listening.
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import * as z from 'zod/v4';

import { listenAndAnnounce, parseServerArgs, readBody, sleep } from './common.mjs';

const opts = parseServerArgs();
const NAME = opts.name;
const vlog = (...a) => opts.verbose && console.error('[ts_server_v1]', ...a);

function buildServer() {
    const server = new McpServer(
        { name: NAME, version: '1.0.0' },
        { capabilities: { logging: {} }, instructions: `Portcullis test peer ${NAME}` }
    );

    server.registerTool(
        'echo',
        { description: 'Echo the given text back unchanged.', inputSchema: { text: z.string() } },
        async ({ text }) => ({ content: [{ type: 'text', text }] })
    );

    server.registerTool(
        'add',
        {
            description: 'Add two integers; the result is also returned as structured content.',
            inputSchema: { a: z.number().int(), b: z.number().int() },
            outputSchema: { result: z.number().int() }
        },
        async ({ a, b }) => ({
            content: [{ type: 'text', text: String(a + b) }],
            structuredContent: { result: a + b }
        })
    );

    server.registerTool(
        'slow_count',
        {
            description: 'Count to n, sending one progress notification and one log message per step.',
            inputSchema: { n: z.number().int() }
        },
        async ({ n }, extra) => {
            const progressToken = extra._meta?.progressToken;
            for (let i = 1; i <= n; i++) {
                await sleep(50);
                if (progressToken !== undefined) {
                    await extra.sendNotification({
                        method: 'notifications/progress',
                        params: { progressToken, progress: i, total: n, message: `step ${i}/${n}` }
                    });
                }
                await extra.sendNotification({
                    method: 'notifications/message',
                    params: { level: 'info', data: `${NAME}: counted ${i} of ${n}` }
                });
            }
            return { content: [{ type: 'text', text: `counted ${n}` }] };
        }
    );

    server.registerTool('whoami', { description: 'Return the name this server was started with.' }, async () => ({
        content: [{ type: 'text', text: NAME }]
    }));

    server.registerPrompt(
        'greet',
        { description: 'A greeting prompt.', argsSchema: { who: z.string().optional() } },
        ({ who }) => ({
            messages: [
                { role: 'user', content: { type: 'text', text: `Hello, ${who ?? 'world'}! Greetings from ${NAME}.` } }
            ]
        })
    );

    server.registerResource(
        'info',
        'portcullis://info',
        { description: 'Static text about this peer.', mimeType: 'text/plain' },
        async uri => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: `peer ${NAME} (ts sdk 1.32.2)` }] })
    );

    return server;
}

/** sessionId -> transport (stateful mode) */
const transports = new Map();

function jsonError(res, status, message) {
    res.writeHead(status, { 'content-type': 'application/json' }).end(
        JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null })
    );
}

async function handle(req, res) {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname !== opts.path) return jsonError(res, 404, 'Not found');
    vlog(req.method, JSON.stringify(req.headers));

    let parsedBody;
    if (req.method === 'POST') {
        const raw = await readBody(req);
        try {
            parsedBody = JSON.parse(raw.toString('utf8'));
        } catch {
            return res
                .writeHead(400, { 'content-type': 'application/json' })
                .end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null }));
        }
    }

    if (opts.stateless) {
        if (req.method !== 'POST') {
            return res.writeHead(405, { allow: 'POST' }).end();
        }
        const server = buildServer();
        const transport = new StreamableHTTPServerTransport({
            sessionIdGenerator: undefined,
            enableJsonResponse: opts['json-response']
        });
        res.on('close', () => {
            transport.close();
            server.close();
        });
        await server.connect(transport);
        await transport.handleRequest(req, res, parsedBody);
        return;
    }

    const sid = req.headers['mcp-session-id'];
    let transport = sid ? transports.get(sid) : undefined;
    if (!transport) {
        if (sid) return jsonError(res, 404, 'Session not found');
        if (req.method !== 'POST' || !isInitializeRequest(parsedBody)) {
            return jsonError(res, 400, 'Bad Request: No valid session ID provided');
        }
        const server = buildServer();
        transport = new StreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            enableJsonResponse: opts['json-response'],
            onsessioninitialized: id => {
                transports.set(id, transport);
            },
            onsessionclosed: id => {
                transports.delete(id);
            }
        });
        transport.onclose = () => {
            if (transport.sessionId) transports.delete(transport.sessionId);
        };
        await server.connect(transport);
    }
    await transport.handleRequest(req, res, parsedBody);
}

const httpServer = createServer((req, res) => {
    handle(req, res).catch(err => {
        console.error('[ts_server_v1] request failed:', err);
        if (!res.headersSent) jsonError(res, 500, 'Internal server error');
        else res.end();
    });
});
listenAndAnnounce(httpServer, opts.port);
