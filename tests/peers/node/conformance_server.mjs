#!/usr/bin/env node
// Upstream for the official MCP conformance suite (@modelcontextprotocol/conformance, server scenarios),
// written on the official TypeScript SDK v2 (@modelcontextprotocol/server 2.4.0 + @modelcontextprotocol/node)
// at http://127.0.0.1:PORT/mcp. It offers the fixtures the suite's server scenarios call by name
// (test_simple_text, test_prompt_with_arguments, test://static-text, test_input_required_result_*, ...)
// and serves BOTH protocol revisions on the one endpoint, composed as ts_server_v2.mjs is:
//   * 2026-07-28 (params._meta carries the protocolVersion claim): createMcpHandler(factory,
//     { legacy: 'reject' }) - a fresh McpServer per request, server/discover, subscriptions/listen,
//     multi-round-trip input_required results with an HMAC-sealed requestState.
//   * 2025-11-25 (everything else): a sessionful WebStandardStreamableHTTPServerTransport per session
//     (Mcp-Session-Id, GET stream, DELETE) with an in-memory event store, so SSE streams carry event
//     ids, a priming event and a retry field, and a closed stream resumes with Last-Event-ID.
// Both legs share one factory, so every tool/prompt/resource exists in both revisions; tools that only
// make sense in one revision say so in their description. Requests whose Host or Origin is not a
// loopback name are refused with 403 (DNS-rebinding protection, scenario dns-rebinding-protection).
//
//   node conformance_server.mjs --port 0 [--name NAME] [--verbose]
// Prints `READY <port>` on stdout once listening (logs go to stderr); SIGTERM stops it.
import { randomBytes, randomUUID } from 'node:crypto';

import { toNodeHandler } from '@modelcontextprotocol/node';
import {
    acceptedContent,
    completable,
    createMcpHandler,
    createRequestStateCodec,
    fromJsonSchema,
    hostHeaderValidationResponse,
    inputRequired,
    inputResponse,
    isLegacyRequest,
    localhostAllowedHostnames,
    localhostAllowedOrigins,
    McpServer,
    originValidationResponse,
    ResourceTemplate,
    WebStandardStreamableHTTPServerTransport
} from '@modelcontextprotocol/server';
import * as z from 'zod';

import { parseServerArgs, serveAt, sleep } from './common.mjs';

const opts = parseServerArgs();
const NAME = opts.name === 'ts-server' ? 'conformance-upstream' : opts.name;
const vlog = (...a) => opts.verbose && console.error('[conformance_server]', ...a);

// A 1x1 red PNG and an empty 8 kHz 16-bit mono WAV, base64 (content fixtures).
const PNG_1X1 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';
const WAV_EMPTY = 'UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=';

// JSON Schema 2020-12 input schema of json_schema_2020_12_tool (SEP-1613 / SEP-2106): $schema, $defs with
// an $anchor, $ref, allOf/anyOf, if/then/else and additionalProperties must reach the client verbatim.
const SCHEMA_2020_12 = {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    type: 'object',
    $defs: {
        address: {
            $anchor: 'addressDef',
            type: 'object',
            properties: { street: { type: 'string' }, city: { type: 'string' } }
        }
    },
    properties: {
        name: { type: 'string' },
        address: { $ref: '#/$defs/address' },
        contactMethod: { type: 'string', enum: ['phone', 'email'] },
        phone: { type: 'string' },
        email: { type: 'string' }
    },
    allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
    if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
    then: { required: ['phone'] },
    else: { required: ['email'] },
    additionalProperties: false
};

// Process-wide state (one process serves every round of a flow, so a per-process HMAC key suffices).
const stateCodec = createRequestStateCodec({ key: randomBytes(32) });
const subscribedUris = new Set();
/** Toggled by test_trigger_tool_change / test_trigger_prompt_change: the lists really change. */
const dynamic = { tool: false, prompt: false };
/** The modern handler (set below); its `notify` publishes to subscriptions/listen streams. */
let modern;
/** Legacy sessions: sessionId -> { transport, server }. */
const sessions = new Map();

const text = t => ({ type: 'text', text: t });
const noArgs = z.object({});
const nameSchema = { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] };

/** The client capabilities this request declared: the 2026 envelope, or the 2025 session's initialize. */
function clientCaps(server, ctx) {
    return ctx.mcpReq.envelope?.['io.modelcontextprotocol/clientCapabilities'] ?? server.server.getClientCapabilities() ?? {};
}

function buildServer(reqCtx) {
    const era = reqCtx?.era ?? 'legacy';
    vlog('factory era', era);
    const server = new McpServer(
        { name: NAME, version: '1.0.0' },
        {
            capabilities: {
                tools: { listChanged: true },
                prompts: { listChanged: true },
                resources: { subscribe: true, listChanged: true },
                logging: {},
                completions: {}
            },
            instructions: `Portcullis conformance upstream ${NAME}`,
            requestState: { verify: stateCodec.verify }
        }
    );
    const tool = (name, description, cb) => server.registerTool(name, { description, inputSchema: noArgs }, cb);

    // ---- content tools (tools-call-*) ----
    tool('test_simple_text', 'Returns one text block.', async () => ({
        content: [text('This is a simple text response for testing.')]
    }));
    tool('test_image_content', 'Returns one PNG image block.', async () => ({
        content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }]
    }));
    tool('test_audio_content', 'Returns one WAV audio block.', async () => ({
        content: [{ type: 'audio', data: WAV_EMPTY, mimeType: 'audio/wav' }]
    }));
    tool('test_embedded_resource', 'Returns one embedded text resource.', async () => ({
        content: [
            {
                type: 'resource',
                resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' }
            }
        ]
    }));
    tool('test_multiple_content_types', 'Returns text, image and embedded resource blocks.', async () => ({
        content: [
            text('Multiple content types test:'),
            { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
            {
                type: 'resource',
                resource: {
                    uri: 'test://mixed-content-resource',
                    mimeType: 'application/json',
                    text: JSON.stringify({ test: 'data', value: 123 })
                }
            }
        ]
    }));
    tool('test_error_handling', 'Always fails; the failure is reported as an isError result.', async () => {
        throw new Error('This tool intentionally returns an error for testing');
    });

    // ---- streaming tools ----
    tool('test_tool_with_logging', 'Sends three info log notifications 50 ms apart.', async (_args, ctx) => {
        for (const [i, msg] of ['Tool execution started', 'Tool processing data', 'Tool execution completed'].entries()) {
            if (i > 0) await sleep(50);
            await ctx.mcpReq.log('info', msg, NAME);
        }
        return { content: [text('Tool with logging executed successfully')] };
    });
    tool('test_logging_tool', 'Logs twice; a 2026-07-28 request without a logLevel must receive no log.', async (_args, ctx) => {
        await ctx.mcpReq.log('info', 'logging tool: first', NAME);
        await sleep(20);
        await ctx.mcpReq.log('warning', 'logging tool: second', NAME);
        return { content: [text('logged twice')] };
    });
    tool('test_tool_with_progress', 'Reports progress 0, 50 and 100 of 100 when the request has a progress token.', async (_args, ctx) => {
        const progressToken = ctx.mcpReq._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
            if (progress > 0) await sleep(50);
            if (progressToken !== undefined) {
                await ctx.mcpReq.notify({
                    method: 'notifications/progress',
                    params: { progressToken, progress, total: 100, message: `Completed step ${progress} of 100` }
                });
            }
        }
        return { content: [text(`progress reported for token ${String(progressToken)}`)] };
    });
    tool('test_reconnection', '2025-11-25: closes its SSE stream mid-call; the result follows on resumption.', async (_args, ctx) => {
        ctx.http?.closeSSE?.();
        await sleep(100);
        return { content: [text('Reconnection test completed successfully.')] };
    });

    // ---- 2025-11-25 server-to-client requests (push style; refused on a 2026-07-28 request) ----
    // Sent with ctx.mcpReq.send, i.e. related to the tools/call, so they ride its POST SSE stream. (The SDK's
    // ctx.mcpReq.elicitInput/requestSampling send them unrelated, on the standalone GET stream, and drop them
    // when none is open yet: a race with a client that opens its GET stream concurrently with the call.)
    const elicit = (ctx, params) => ctx.mcpReq.send({ method: 'elicitation/create', params });
    server.registerTool(
        'test_sampling',
        { description: '2025-11-25: asks the client to sample (sampling/createMessage).', inputSchema: z.object({ prompt: z.string() }) },
        async ({ prompt }, ctx) => {
            const res = await ctx.mcpReq.send({
                method: 'sampling/createMessage',
                params: { messages: [{ role: 'user', content: text(prompt) }], maxTokens: 100 }
            });
            const out = Array.isArray(res.content) ? res.content.find(c => c.type === 'text')?.text : res.content?.text;
            return { content: [text(`LLM response: ${out ?? '(no text)'}`)] };
        }
    );
    server.registerTool(
        'test_elicitation',
        { description: '2025-11-25: asks the client for input (elicitation/create).', inputSchema: z.object({ message: z.string() }) },
        async ({ message }, ctx) => {
            const res = await elicit(ctx, {
                mode: 'form',
                message,
                requestedSchema: {
                    type: 'object',
                    properties: {
                        username: { type: 'string', description: "User's response" },
                        email: { type: 'string', description: "User's email address" }
                    },
                    required: ['username', 'email']
                }
            });
            return { content: [text(`User response: action=${res.action}, content=${JSON.stringify(res.content ?? {})}`)] };
        }
    );
    tool('test_elicitation_sep1034_defaults', '2025-11-25: elicitation whose fields carry defaults (SEP-1034).', async (_args, ctx) => {
        const res = await elicit(ctx, {
            mode: 'form',
            message: 'Please review the defaults',
            requestedSchema: {
                type: 'object',
                properties: {
                    name: { type: 'string', description: 'Name', default: 'John Doe' },
                    age: { type: 'integer', description: 'Age', default: 30 },
                    score: { type: 'number', description: 'Score', default: 95.5 },
                    status: { type: 'string', description: 'Status', enum: ['active', 'inactive', 'pending'], default: 'active' },
                    verified: { type: 'boolean', description: 'Verified', default: true }
                },
                required: []
            }
        });
        return { content: [text(`Elicitation completed: action=${res.action}, content=${JSON.stringify(res.content ?? {})}`)] };
    });
    tool('test_elicitation_sep1330_enums', '2025-11-25: elicitation with the five enum schema forms (SEP-1330).', async (_args, ctx) => {
        const choices = (prefix, titles) => titles.map((title, i) => ({ const: `${prefix}${i + 1}`, title }));
        const res = await elicit(ctx, {
            mode: 'form',
            message: 'Pick some options',
            requestedSchema: {
                type: 'object',
                properties: {
                    untitledSingle: { type: 'string', description: 'One option', enum: ['option1', 'option2', 'option3'] },
                    titledSingle: {
                        type: 'string',
                        description: 'One titled option',
                        oneOf: choices('value', ['First Option', 'Second Option', 'Third Option'])
                    },
                    legacyEnum: {
                        type: 'string',
                        description: 'One option (legacy enumNames)',
                        enum: ['opt1', 'opt2', 'opt3'],
                        enumNames: ['Option One', 'Option Two', 'Option Three']
                    },
                    untitledMulti: {
                        type: 'array',
                        description: 'Several options',
                        minItems: 1,
                        maxItems: 3,
                        items: { type: 'string', enum: ['option1', 'option2', 'option3'] }
                    },
                    titledMulti: {
                        type: 'array',
                        description: 'Several titled options',
                        minItems: 1,
                        maxItems: 3,
                        items: { anyOf: choices('value', ['First Choice', 'Second Choice', 'Third Choice']) }
                    }
                },
                required: []
            }
        });
        return { content: [text(`Elicitation completed: action=${res.action}, content=${JSON.stringify(res.content ?? {})}`)] };
    });

    // ---- JSON Schema 2020-12 preservation ----
    server.registerTool(
        'json_schema_2020_12_tool',
        { description: 'Takes an input schema using JSON Schema 2020-12 keywords.', inputSchema: fromJsonSchema(SCHEMA_2020_12) },
        async args => ({ content: [text(`called with ${JSON.stringify(args)}`)] })
    );

    // ---- SEP-2243 custom headers: `region` is mirrored in an Mcp-Param-Region header (2026-07-28) ----
    server.registerTool(
        'test_custom_header',
        {
            description: 'Echoes region; 2026-07-28 clients must mirror it in the Mcp-Param-Region header.',
            inputSchema: fromJsonSchema({
                type: 'object',
                properties: { region: { type: 'string', 'x-mcp-header': 'Region' }, query: { type: 'string' } },
                required: ['region']
            })
        },
        async ({ region }) => ({ content: [text(`region ${region}`)] })
    );

    // ---- 2026-07-28 multi-round-trip tools (input_required; SEP-2322) ----
    const askName = message => inputRequired.elicit({ message, requestedSchema: nameSchema });
    tool('test_input_required_result_elicitation', 'input_required: asks for a name, then greets.', async (_args, ctx) => {
        const got = acceptedContent(ctx.mcpReq.inputResponses, 'user_name');
        if (typeof got?.name !== 'string') return inputRequired({ inputRequests: { user_name: askName('What is your name?') } });
        return { content: [text(`Hello, ${got.name}!`)] };
    });
    tool('test_input_required_result_sampling', 'input_required: asks the client to sample, then answers.', async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'capital_question');
        if (r.kind !== 'sampling') {
            return inputRequired({
                inputRequests: {
                    capital_question: inputRequired.createMessage({
                        messages: [{ role: 'user', content: text('What is the capital of France?') }],
                        maxTokens: 100
                    })
                }
            });
        }
        const c = Array.isArray(r.result.content) ? r.result.content[0] : r.result.content;
        return { content: [text(`Sampling answered: ${c?.text ?? '(no text)'}`)] };
    });
    tool('test_input_required_result_list_roots', 'input_required: asks for the client roots, then lists them.', async (_args, ctx) => {
        const r = inputResponse(ctx.mcpReq.inputResponses, 'client_roots');
        if (r.kind !== 'roots') return inputRequired({ inputRequests: { client_roots: inputRequired.listRoots() } });
        return { content: [text(`Roots: ${r.roots.map(x => x.uri).join(', ')}`)] };
    });
    tool('test_input_required_result_request_state', 'input_required with a sealed requestState to echo.', async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const ok = acceptedContent(ctx.mcpReq.inputResponses, 'confirm');
        if (state?.flow !== 'request_state' || typeof ok?.ok !== 'boolean') {
            return inputRequired({
                inputRequests: {
                    confirm: inputRequired.elicit({
                        message: 'Please confirm',
                        requestedSchema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }
                    })
                },
                requestState: await stateCodec.mint({ flow: 'request_state' })
            });
        }
        return { content: [text(`state-ok: confirmed=${ok.ok}`)] };
    });
    tool('test_input_required_result_multiple_inputs', 'input_required: elicitation, sampling and roots at once.', async (_args, ctx) => {
        const rs = ctx.mcpReq.inputResponses;
        const name = acceptedContent(rs, 'user_name');
        const greeting = inputResponse(rs, 'greeting');
        const roots = inputResponse(rs, 'client_roots');
        const complete = typeof name?.name === 'string' && greeting.kind === 'sampling' && roots.kind === 'roots';
        if (ctx.mcpReq.requestState()?.flow === 'multiple' && complete) {
            return { content: [text(`all inputs received: ${name.name}, ${roots.roots.length} root(s)`)] };
        }
        return inputRequired({
            inputRequests: {
                user_name: askName('What is your name?'),
                greeting: inputRequired.createMessage({
                    messages: [{ role: 'user', content: text('Generate a greeting') }],
                    maxTokens: 50
                }),
                client_roots: inputRequired.listRoots()
            },
            requestState: await stateCodec.mint({ flow: 'multiple' })
        });
    });
    tool('test_input_required_result_multi_round', 'input_required over two rounds (name, then colour).', async (_args, ctx) => {
        const state = ctx.mcpReq.requestState();
        const rs = ctx.mcpReq.inputResponses;
        if (state?.round === 2) {
            const color = acceptedContent(rs, 'step2');
            if (typeof color?.color === 'string') return { content: [text(`Hello ${state.name}, you like ${color.color}.`)] };
        }
        const name = acceptedContent(rs, 'step1');
        if (state?.round === 1 && typeof name?.name === 'string') {
            return inputRequired({
                inputRequests: {
                    step2: inputRequired.elicit({
                        message: 'Step 2: What is your favorite color?',
                        requestedSchema: { type: 'object', properties: { color: { type: 'string' } }, required: ['color'] }
                    })
                },
                requestState: await stateCodec.mint({ round: 2, name: name.name })
            });
        }
        return inputRequired({
            inputRequests: { step1: askName('Step 1: What is your name?') },
            requestState: await stateCodec.mint({ round: 1 })
        });
    });
    tool('test_input_required_result_tampered_state', 'input_required; a tampered requestState gets -32602.', async (_args, ctx) => {
        const ok = acceptedContent(ctx.mcpReq.inputResponses, 'confirm');
        if (ctx.mcpReq.requestState()?.flow === 'tampered' && ok !== undefined) return { content: [text('state verified')] };
        return inputRequired({
            inputRequests: {
                confirm: inputRequired.elicit({
                    message: 'Confirm?',
                    requestedSchema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }
                })
            },
            requestState: await stateCodec.mint({ flow: 'tampered' })
        });
    });
    tool('test_input_required_result_capabilities', 'input_required: asks only for declared capabilities.', async (_args, ctx) => {
        const caps = clientCaps(server, ctx);
        const rs = ctx.mcpReq.inputResponses;
        if (rs && Object.keys(rs).length > 0) return { content: [text(`answered: ${Object.keys(rs).sort().join(', ')}`)] };
        const inputRequests = {};
        if (caps.elicitation) inputRequests.user_name = askName('What is your name?');
        if (caps.sampling) {
            const messages = [{ role: 'user', content: text('Say hello') }];
            inputRequests.greeting = inputRequired.createMessage({ messages, maxTokens: 20 });
        }
        if (Object.keys(inputRequests).length === 0) return { content: [text('the client declared neither elicitation nor sampling')] };
        return inputRequired({ inputRequests });
    });
    // The SDK refuses an input_required result that asks for a capability the client did not declare
    // with MissingRequiredClientCapabilityError (-32021, HTTP 400) before it reaches the wire.
    tool('test_missing_capability', 'Needs sampling from the client; a client without the capability gets -32021.', async (_args, ctx) => {
        if (inputResponse(ctx.mcpReq.inputResponses, 'sample').kind === 'sampling') return { content: [text('sampled')] };
        return inputRequired({
            inputRequests: { sample: inputRequired.createMessage({ messages: [{ role: 'user', content: text('Say hi') }], maxTokens: 10 }) }
        });
    });
    tool('test_streaming_elicitation', 'Progress, then input_required (elicitation); never a standalone request.', async (_args, ctx) => {
        const progressToken = ctx.mcpReq._meta?.progressToken;
        if (progressToken !== undefined) {
            await ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken, progress: 1, total: 2 } });
        }
        const got = acceptedContent(ctx.mcpReq.inputResponses, 'user_name');
        if (typeof got?.name === 'string') return { content: [text(`Hello, ${got.name}!`)] };
        return inputRequired({ inputRequests: { user_name: askName('What is your name?') } });
    });
    tool('test_trigger_tool_change', 'Adds or removes test_dynamic_tool and announces tools/list_changed.', async () => {
        dynamic.tool = !dynamic.tool;
        modern.notify.toolsChanged();
        for (const s of sessions.values()) s.server.sendToolListChanged();
        return { content: [text(`test_dynamic_tool ${dynamic.tool ? 'added' : 'removed'}`)] };
    });
    tool('test_trigger_prompt_change', 'Adds or removes test_dynamic_prompt and announces prompts/list_changed.', async () => {
        dynamic.prompt = !dynamic.prompt;
        modern.notify.promptsChanged();
        for (const s of sessions.values()) s.server.sendPromptListChanged();
        return { content: [text(`test_dynamic_prompt ${dynamic.prompt ? 'added' : 'removed'}`)] };
    });
    if (dynamic.tool) {
        tool('test_dynamic_tool', 'Exists while test_trigger_tool_change has it on.', async () => ({ content: [text('dynamic')] }));
    }

    // ---- prompts ----
    server.registerPrompt('test_simple_prompt', { title: 'Simple prompt', description: 'A prompt without arguments.' }, () => ({
        messages: [{ role: 'user', content: text('This is a simple prompt for testing.') }]
    }));
    const words = ['paris', 'park', 'party', 'test', 'testing', 'tested'];
    server.registerPrompt(
        'test_prompt_with_arguments',
        {
            title: 'Prompt with arguments',
            description: 'A prompt with two required arguments; arg1 offers completions.',
            argsSchema: z.object({
                arg1: completable(z.string().describe('First test argument'), value => words.filter(w => w.startsWith(value ?? ''))),
                arg2: z.string().describe('Second test argument')
            })
        },
        ({ arg1, arg2 }) => ({ messages: [{ role: 'user', content: text(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`) }] })
    );
    server.registerPrompt(
        'test_prompt_with_embedded_resource',
        {
            title: 'Prompt with an embedded resource',
            description: 'Embeds the resource named by resourceUri.',
            argsSchema: z.object({ resourceUri: z.string().describe('URI of the resource to embed') })
        },
        ({ resourceUri }) => ({
            messages: [
                {
                    role: 'user',
                    content: {
                        type: 'resource',
                        resource: { uri: resourceUri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' }
                    }
                },
                { role: 'user', content: text('Please process the embedded resource above.') }
            ]
        })
    );
    server.registerPrompt('test_prompt_with_image', { title: 'Prompt with an image', description: 'Carries a PNG image.' }, () => ({
        messages: [
            { role: 'user', content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' } },
            { role: 'user', content: text('Please analyze the image above.') }
        ]
    }));
    server.registerPrompt(
        'test_input_required_result_prompt',
        { title: 'Prompt needing input', description: 'input_required: asks for context before rendering.' },
        ctx => {
            const got = acceptedContent(ctx.mcpReq.inputResponses, 'user_context');
            if (typeof got?.context !== 'string') {
                return inputRequired({
                    inputRequests: {
                        user_context: inputRequired.elicit({
                            message: 'What context should the prompt use?',
                            requestedSchema: { type: 'object', properties: { context: { type: 'string' } }, required: ['context'] }
                        })
                    }
                });
            }
            return { messages: [{ role: 'user', content: text(`Context: ${got.context}`) }] };
        }
    );
    if (dynamic.prompt) {
        server.registerPrompt('test_dynamic_prompt', { description: 'Exists while test_trigger_prompt_change has it on.' }, () => ({
            messages: [{ role: 'user', content: text('dynamic') }]
        }));
    }

    // ---- resources ----
    server.registerResource(
        'static-text',
        'test://static-text',
        { title: 'Static text', description: 'A static text resource.', mimeType: 'text/plain' },
        async () => ({
            contents: [{ uri: 'test://static-text', mimeType: 'text/plain', text: 'This is the content of the static text resource.' }]
        })
    );
    server.registerResource(
        'static-binary',
        'test://static-binary',
        { title: 'Static binary', description: 'A static PNG resource.', mimeType: 'image/png' },
        async () => ({ contents: [{ uri: 'test://static-binary', mimeType: 'image/png', blob: PNG_1X1 }] })
    );
    server.registerResource(
        'template',
        new ResourceTemplate('test://template/{id}/data', { list: undefined }),
        { title: 'Template', description: 'Data for an id.', mimeType: 'application/json' },
        async (uri, { id }) => {
            const data = JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` });
            return { contents: [{ uri: uri.href, mimeType: 'application/json', text: data }] };
        }
    );
    server.registerResource(
        'watched-resource',
        'test://watched-resource',
        { title: 'Watched', description: 'A resource clients may subscribe to.', mimeType: 'text/plain' },
        async () => ({ contents: [{ uri: 'test://watched-resource', mimeType: 'text/plain', text: 'Watched resource content' }] })
    );
    if (era === 'legacy') {
        // resources/subscribe and unsubscribe exist in 2025-11-25 only (2026-07-28 uses subscriptions/listen).
        server.server.setRequestHandler('resources/subscribe', async req => {
            subscribedUris.add(req.params.uri);
            return {};
        });
        server.server.setRequestHandler('resources/unsubscribe', async req => {
            subscribedUris.delete(req.params.uri);
            return {};
        });
    }
    return server;
}

/** In-memory SSE event store for the 2025 sessions (ids `<stream>_<seq>`, replay after an id). */
function memoryEventStore() {
    const events = [];
    let seq = 0;
    return {
        async storeEvent(streamId, message) {
            const eventId = `${streamId}_${String(++seq).padStart(10, '0')}`;
            events.push({ eventId, streamId, message });
            return eventId;
        },
        async getStreamIdForEventId(eventId) {
            return events.find(e => e.eventId === eventId)?.streamId;
        },
        async replayEventsAfter(lastEventId, { send }) {
            const at = events.findIndex(e => e.eventId === lastEventId);
            if (at < 0) throw new Error(`unknown event id ${lastEventId}`);
            const { streamId } = events[at];
            for (const e of events.slice(at + 1)) if (e.streamId === streamId) await send(e.eventId, e.message);
            return streamId;
        }
    };
}

const onerror = err => vlog('handler error:', err?.message ?? err);
modern = createMcpHandler(buildServer, { legacy: 'reject', onerror });

async function legacy(request) {
    const sid = request.headers.get('mcp-session-id');
    let session = sid ? sessions.get(sid) : undefined;
    if (!session) {
        if (sid) return Response.json({ jsonrpc: '2.0', error: { code: -32000, message: 'Session not found' }, id: null }, { status: 404 });
        if (request.method !== 'POST') {
            const error = { code: -32000, message: 'Bad Request: No valid session ID provided' };
            return Response.json({ jsonrpc: '2.0', error, id: null }, { status: 400 });
        }
        const server = buildServer({ era: 'legacy' });
        const transport = new WebStandardStreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            eventStore: memoryEventStore(),
            retryInterval: 200,
            onsessioninitialized: id => {
                sessions.set(id, { transport, server });
            },
            onsessionclosed: id => {
                sessions.delete(id);
            }
        });
        transport.onclose = () => {
            if (transport.sessionId) sessions.delete(transport.sessionId);
        };
        await server.connect(transport);
        session = { transport, server };
    }
    return session.transport.handleRequest(request);
}

const loopbackHosts = localhostAllowedHostnames();
const loopbackOrigins = localhostAllowedOrigins();
const fetchHandler = {
    fetch: async request => {
        const refused = hostHeaderValidationResponse(request, loopbackHosts) ?? originValidationResponse(request, loopbackOrigins);
        if (refused) return refused;
        return (await isLegacyRequest(request)) ? legacy(request) : modern.fetch(request);
    }
};

serveAt(toNodeHandler(fetchHandler, { onerror }), { path: opts.path, port: opts.port, label: 'conformance_server', vlog });
