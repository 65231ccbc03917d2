#!/usr/bin/env node
// One MCP 2026-07-28 scenario through Tessera with the official TypeScript SDK v2 client
// (@modelcontextprotocol/client, pinned in package.json), for tests/e2e/test_mcp_ts.py.
//
//     node client.mjs <mcp url> <bearer token> <scenario>
//
// The client is pinned to 2026-07-28 (`versionNegotiation: { mode: { pin } }`: connect sends
// server/discover and nothing else, no initialize, no session) and sends the token on every
// request through its `authProvider`. It prints one JSON line on stdout:
//     {"scenario", "era", "protocolVersion", "outcome": {"result" | "error"},
//      "person": [each elicitation: url, views (statuses of the page loads), status, page, approval],
//      "http": [every request the transport sent: rpc method, _meta version, retry, headers of
//               interest, status]}
// and exits 0 whatever the outcome (the test judges it); 2 on bad arguments.
//
// Scenarios:
//     list           tools/list → the tool names
//     call-allowed   tools/call read_file /workspace/README.md → the text
//     call-refused   tools/call read_file /etc/passwd → the JSON-RPC error (code, message, data)
//     approve        tools/call transfer_funds {amount: 500, to_account: "EXT-42"}; the
//                    elicitation/create handler (URL mode) plays the person: it opens the URL (the
//                    approval page, once: Tessera announced the request before answering), presses Approve (POST
//                    digest, approver to the page's /approve) and accepts; the SDK retries the
//                    call by itself
//     wait           as approve, but the person only accepts, never approves (the SDK gives up
//                    after 3 rounds)
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const MODERN = '2026-07-28';
const SCENARIOS = ['list', 'call-allowed', 'call-refused', 'approve', 'wait'];
const RECORDED_HEADERS = ['mcp-protocol-version', 'mcp-method', 'mcp-name', 'mcp-session-id'];
const SAFETY_NET_MS = 60_000; // bounds a hang; no timing is asserted

const [url, bearer, scenario] = process.argv.slice(2);
if (!url || !bearer || !SCENARIOS.includes(scenario)) {
    process.stderr.write(`usage: node client.mjs <mcp url> <bearer token> <${SCENARIOS.join('|')}>\n`);
    process.exit(2);
}

// What the transport put on the wire, so that the test can compare it with what the server saw.
const http = [];

function headerMap(headers) {
    const h = new Headers(headers);
    return Object.fromEntries(RECORDED_HEADERS.filter(k => h.has(k)).map(k => [k, h.get(k)]));
}

function rpcOf(body) {
    try {
        const doc = JSON.parse(body);
        return {
            rpc: doc.method ?? '<response>',
            metaVersion: doc.params?._meta?.['io.modelcontextprotocol/protocolVersion'] ?? null,
            retry: Boolean(doc.params?.inputResponses || doc.params?.requestState)
        };
    } catch {
        return { rpc: null, metaVersion: null, retry: false };
    }
}

async function recordingFetch(input, init = {}) {
    const entry = {
        method: init.method ?? 'GET',
        ...(typeof init.body === 'string' ? rpcOf(init.body) : { rpc: null }),
        headers: headerMap(init.headers),
        authorization: new Headers(init.headers).get('authorization')?.split(' ')[0] ?? null,
        status: null
    };
    http.push(entry);
    const response = await fetch(input, init);
    entry.status = response.status;
    entry.contentType = response.headers.get('content-type');
    return response;
}

// The person at the approval page: what they saw and what the page answered.
const person = [];

async function approvingPerson(pageUrl, approve) {
    // Tessera answers input_required only once the page has the request (approval.webhook):
    // one view, no reloads.
    const seen = { url: pageUrl, views: [] };
    person.push(seen);
    const shown = await fetch(pageUrl);
    seen.status = shown.status;
    seen.page = await shown.text();
    seen.views.push(shown.status);
    if (approve) {
        const target = new URL(pageUrl);
        const digest = target.searchParams.get('digest') ?? '';
        target.search = '';
        const answer = await fetch(target, {
            method: 'POST',
            body: new URLSearchParams({ digest, approver: 'bob@example.com' })
        });
        seen.approval = { status: answer.status, page: await answer.text() };
    }
}

function errorOf(e) {
    return {
        name: e?.constructor?.name ?? typeof e,
        code: e?.code ?? null,
        message: e?.message ?? String(e),
        data: e?.data ?? null
    };
}

const client = new Client(
    { name: 'tessera-ts-e2e', version: '0.0.0' },
    {
        capabilities: { elicitation: { url: {} } },
        versionNegotiation: { mode: { pin: MODERN } },
        inputRequired: { maxRounds: 3 }
    }
);

client.setRequestHandler('elicitation/create', async request => {
    const params = request.params;
    if (params.mode !== 'url') {
        return { action: 'decline' };
    }
    await approvingPerson(params.url, scenario === 'approve');
    return { action: 'accept' };
});

const transport = new StreamableHTTPClientTransport(new URL(url), {
    authProvider: { token: async () => bearer },
    fetch: recordingFetch
});

async function play() {
    switch (scenario) {
        case 'list': {
            const { tools } = await client.listTools();
            return { tools: tools.map(t => t.name) };
        }
        case 'call-allowed':
        case 'call-refused': {
            const path = scenario === 'call-allowed' ? '/workspace/README.md' : '/etc/passwd';
            const result = await client.callTool({ name: 'read_file', arguments: { path } });
            return callResult(result);
        }
        case 'approve':
        case 'wait': {
            const result = await client.callTool({
                name: 'transfer_funds',
                arguments: { amount: 500, to_account: 'EXT-42' }
            });
            return callResult(result);
        }
    }
}

function callResult(result) {
    return {
        isError: Boolean(result.isError),
        text: (result.content ?? []).filter(c => c.type === 'text').map(c => c.text).join('')
    };
}

const report = { scenario, era: null, protocolVersion: null, outcome: null, person, http };
const timer = setTimeout(() => {
    report.outcome = { error: { name: 'Timeout', code: null, message: `no outcome after ${SAFETY_NET_MS} ms`, data: null } };
    process.stdout.write(JSON.stringify(report) + '\n');
    process.exit(1);
}, SAFETY_NET_MS);

try {
    await client.connect(transport);
    report.era = client.getProtocolEra() ?? null;
    report.protocolVersion = client.getNegotiatedProtocolVersion() ?? null;
    report.outcome = { result: await play() };
} catch (e) {
    report.outcome = { error: errorOf(e) };
} finally {
    clearTimeout(timer);
    await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(report) + '\n');
