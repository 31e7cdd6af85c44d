#!/usr/bin/env node
// MCP test client on the official TypeScript SDK v2 (@modelcontextprotocol/client 2.4.0),
// StreamableHTTPClientTransport. Protocols: 2025-11-25 and 2026-07-28.
//
//   node ts_client_v2.mjs URL --revision 2025-11-25|2026-07-28 --scenario list|call|progress|session-delete
//        [--tool NAME --args JSON] [--n N] [--connect pin|auto] [--tools-only] [--timeout SECONDS]
//
// Revision forcing (ClientOptions.versionNegotiation):
//   2025-11-25 -> { mode: 'legacy' }: the plain `initialize` handshake (offers 2025-11-25), no probe.
//   2026-07-28 -> --connect pin (default): { mode: { pin: '2026-07-28' } }: a `server/discover`
//                 probe that must offer 2026-07-28, no fallback;
//                 --connect auto: { mode: 'auto' }: probe, fall back to `initialize` on legacy
//                 servers (which this client then reports as a failure).
// The negotiated version (client.getNegotiatedProtocolVersion()) must equal --revision.
// Prints one JSON line (same shape as py_client.py); exit 0 on success, 1 on failure.
import { Client, LOG_LEVEL_META_KEY, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

import { callResult, Fail, parseClientArgs, probeDeletedSession, recordingFetch, runClient } from './common.mjs';

const a = parseClientArgs();
const out = { ok: false, peer: 'ts_client_v2', sdk: '@modelcontextprotocol/client@2.4.0', revision: a.revision, scenario: a.scenario };

await runClient(out, a.timeoutMs, async out => {
    if (a.scenario === 'session-delete' && a.revision !== '2025-11-25') {
        throw new Fail('session-delete is a 2025-11-25 scenario (2026-07-28 has no sessions)');
    }
    const modern = a.revision === '2026-07-28';
    const mode = !modern ? 'legacy' : a.connect === 'auto' ? 'auto' : { pin: a.revision };
    out.mode = mode;
    const records = [];
    const sessionIds = [];
    const logs = [];
    const transport = new StreamableHTTPClientTransport(new URL(a.url), { fetch: recordingFetch(records, sessionIds) });
    const client = new Client(
        { name: 'portcullis-ts-client-v2', version: '1.0.0' },
        { capabilities: {}, versionNegotiation: { mode } }
    );
    client.setNotificationHandler('notifications/message', n => {
        logs.push(n.params.data);
    });
    try {
        await client.connect(transport);
        out.negotiated = client.getNegotiatedProtocolVersion() ?? null;
        out.era = client.getProtocolEra() ?? null;
        out.server_info = client.getServerVersion() ?? null;
        if (out.negotiated !== a.revision) {
            throw new Fail(`negotiated protocol version ${JSON.stringify(out.negotiated)}, wanted ${a.revision}`);
        }

        if (a.scenario === 'list') {
            out.tools = (await client.listTools()).tools.map(t => t.name).sort();
            if (!a.toolsOnly) {
                out.prompts = (await client.listPrompts()).prompts.map(p => p.name).sort();
                out.resources = (await client.listResources()).resources.map(r => r.uri).sort();
            }
        } else if (a.scenario === 'call') {
            if (!a.tool) throw new Fail('--tool is required for the call scenario');
            const res = await client.callTool({ name: a.tool, arguments: a.args });
            Object.assign(out, callResult(res));
            if (out.is_error) throw new Fail(`tool ${a.tool} returned isError: ${out.text}`);
        } else if (a.scenario === 'progress') {
            const progress = [];
            const params = { name: a.prefix + 'slow_count', arguments: { n: a.n } };
            // 2026-07-28: log delivery is a per-request opt-in via the _meta logLevel key.
            if (modern) params._meta = { [LOG_LEVEL_META_KEY]: 'debug' };
            const res = await client.callTool(params, { onprogress: p => progress.push(p) });
            Object.assign(out, callResult(res));
            out.progress = progress;
            out.logs = logs;
            if (out.is_error || out.text !== `counted ${a.n}`) throw new Fail(`unexpected slow_count result: ${out.text}`);
            const got = progress.map(p => p.progress).join(',');
            const want = Array.from({ length: a.n }, (_, i) => i + 1).join(',');
            if (got !== want) throw new Fail(`expected progress ${want}, got ${got}`);
        } else if (a.scenario === 'session-delete') {
            Object.assign(out, callResult(await client.callTool({ name: a.prefix + 'echo', arguments: { text: 'before-delete' } })));
            const sid = transport.sessionId;
            if (!sid) throw new Fail('server did not assign an Mcp-Session-Id');
            out.session_id = sid;
            await transport.terminateSession(); // throws on a non-2xx (other than 405)
            const del = records.filter(r => r.method === 'DELETE').at(-1);
            out.delete_status = del?.status ?? null;
            if (out.delete_status !== 200 && out.delete_status !== 204) throw new Fail(`DELETE answered ${out.delete_status}`);
            out.post_after_delete_status = await probeDeletedSession(a.url, sid);
            if (out.post_after_delete_status !== 404) {
                throw new Fail(`POST with the deleted session id answered ${out.post_after_delete_status}, expected 404`);
            }
        }
    } finally {
        await client.close().catch(() => {});
        out.http = records;
    }
});
