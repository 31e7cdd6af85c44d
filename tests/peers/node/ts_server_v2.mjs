#!/usr/bin/env node
// Upstream MCP test server on the official TypeScript SDK v2 (@modelcontextprotocol/server 2.4.0,
// Node adapter @modelcontextprotocol/node 2.1.2) at http://127.0.0.1:PORT/mcp.
// Serves BOTH protocol eras on the one endpoint:
//   * 2026-07-28: createMcpHandler(factory) - per-request server instance, `server/discover`,
//     no sessions. Routing is by the request BODY: a request whose params._meta carries
//     "io.modelcontextprotocol/protocolVersion" (the envelope claim) goes to the modern leg.
//   * 2025-11-25: everything else (isLegacyRequest(request) === true):
//       default      sessionful WebStandardStreamableHTTPServerTransport (Mcp-Session-Id, GET, DELETE)
//                    wired in front of createMcpHandler(factory, { legacy: 'reject' }) as the SDK docs show;
//       --stateless  createMcpHandler's own stateless legacy fallback (no session id, GET/DELETE -> 405);
//       --modern-only  createMcpHandler(factory, { legacy: 'reject' }) alone: 2025 traffic is refused.
//   --json-response: modern responseMode 'json' (progress/log notifications dropped) and
//                    enableJsonResponse on the sessionful legacy transport.
//
//   node ts_server_v2.mjs --port 0 --name NAME [--stateless | --modern-only] [--json-response]
// Prints `READY <port>` on stdout once listening.
import { randomUUID } from 'node:crypto';

import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, isLegacyRequest, McpServer, WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/server';
import * as z from 'zod';

import { parseServerArgs, serveAt, sleep } from './common.mjs';

const opts = parseServerArgs({ 'modern-only': { type: 'boolean', default: false } });
const NAME = opts.name;
const jsonMode = opts['json-response'];
const vlog = (...a) => opts.verbose && console.error('[ts_server_v2]', ...a);
if (opts.stateless && opts['modern-only']) {
    console.error('--stateless and --modern-only are exclusive');
    process.exit(2);
}

/** One factory for both eras (SDK guidance): the same tools/prompts/resources everywhere. */
function buildServer(ctx) {
    vlog('factory era', ctx?.era);
    const server = new McpServer(
        { name: NAME, version: '1.0.0' },
        { capabilities: { logging: {} }, instructions: `Portcullis test peer ${NAME}` }
    );

    server.registerTool(
        'echo',
        { description: 'Echo the given text back unchanged.', inputSchema: z.object({ text: z.string() }) },
        async ({ text }) => ({ content: [{ type: 'text', text }] })
    );

    server.registerTool(
        'add',
        {
            description: 'Add two integers; the result is also returned as structured content.',
            inputSchema: z.object({ a: z.number().int(), b: z.number().int() }),
            outputSchema: z.object({ result: z.number().int() })
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
            inputSchema: z.object({ n: z.number().int() })
        },
        async ({ n }, ctx) => {
            const progressToken = ctx.mcpReq._meta?.progressToken;
            for (let i = 1; i <= n; i++) {
                await sleep(50);
                if (progressToken !== undefined) {
                    await ctx.mcpReq.notify({
                        method: 'notifications/progress',
                        params: { progressToken, progress: i, total: n, message: `step ${i}/${n}` }
                    });
                }
                await ctx.mcpReq.log('info', `${NAME}: counted ${i} of ${n}`);
            }
            return { content: [{ type: 'text', text: `counted ${n}` }] };
        }
    );

    server.registerTool('whoami', { description: 'Return the name this server was started with.' }, async () => ({
        content: [{ type: 'text', text: NAME }]
    }));

    server.registerPrompt(
        'greet',
        { description: 'A greeting prompt.', argsSchema: z.object({ who: z.string().optional() }) },
        ({ who }) => ({
            messages: [{ role: 'user', content: { type: 'text', text: `Hello, ${who ?? 'world'}! Greetings from ${NAME}.` } }]
        })
    );

    server.registerResource(
        'info',
        'portcullis://info',
        { description: 'Static text about this peer.', mimeType: 'text/plain' },
        async uri => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: `peer ${NAME} (ts server 2.4.0)` }] })
    );

    return server;
}

const onerror = err => vlog('handler error:', err?.message ?? err);
const responseMode = jsonMode ? 'json' : 'auto';

let fetchHandler;
if (opts.stateless) {
    // Built-in: modern leg + stateless legacy fallback.
    fetchHandler = createMcpHandler(buildServer, { legacy: 'stateless', responseMode, onerror });
} else {
    const modern = createMcpHandler(buildServer, { legacy: 'reject', responseMode, onerror });
    if (opts['modern-only']) {
        fetchHandler = modern;
    } else {
        /** sessionId -> WebStandardStreamableHTTPServerTransport */
        const sessions = new Map();
        const legacy = async request => {
            const sid = request.headers.get('mcp-session-id');
            let transport = sid ? sessions.get(sid) : undefined;
            if (!transport) {
                if (sid) return Response.json({ jsonrpc: '2.0', error: { code: -32000, message: 'Session not found' }, id: null }, { status: 404 });
                if (request.method !== 'POST') {
                    return Response.json(
                        { jsonrpc: '2.0', error: { code: -32000, message: 'Bad Request: No valid session ID provided' }, id: null },
                        { status: 400 }
                    );
                }
                const t = new WebStandardStreamableHTTPServerTransport({
                    sessionIdGenerator: () => randomUUID(),
                    enableJsonResponse: jsonMode,
                    onsessioninitialized: id => {
                        sessions.set(id, t);
                    },
                    onsessionclosed: id => {
                        sessions.delete(id);
                    }
                });
                t.onclose = () => {
                    if (t.sessionId) sessions.delete(t.sessionId);
                };
                await buildServer({ era: 'legacy' }).connect(t);
                transport = t;
            }
            return transport.handleRequest(request);
        };
        fetchHandler = {
            fetch: async (request, options) => ((await isLegacyRequest(request)) ? legacy(request) : modern.fetch(request, options))
        };
    }
}

serveAt(toNodeHandler(fetchHandler, { onerror }), { path: opts.path, port: opts.port, label: 'ts_server_v2', vlog });
