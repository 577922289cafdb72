// Drives a running sandboxd with LibreChat's own client code (@librechat/agents, pinned in
// package.json) and LibreChat-backend-style HTTP calls (axios + form-data), then prints ONE JSON
// object describing what it observed. The pytest tier (tests/e2e/test_librechat_client.py) makes
// the assertions; this script only exercises and reports. The JSON goes on one stdout line that
// starts with RESULT_MARKER, so stray log lines from the package cannot corrupt it.
//
//   LIBRECHAT_CODE_BASEURL=http://127.0.0.1:PORT node driver.mjs <scenario>
//
// Only loopback base URLs are accepted (plus the one host E2E_ALLOWED_HOST names: the daemon's
// container on a compose network the container tier made): the package's built-in default points
// at a hosted service and this script must never send traffic anywhere else.

import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

import axios from 'axios';
import FormData from 'form-data';

// The agents package reads a proxy from $PROXY; tests talk to loopback only.
delete process.env.PROXY;

const RESULT_MARKER = 'E2E-RESULT ';
function emit(obj) {
  process.stdout.write(RESULT_MARKER + JSON.stringify(obj) + '\n');
}

const BASE = process.env.LIBRECHAT_CODE_BASEURL ?? '';
{
  let host = '';
  try {
    host = new URL(BASE).hostname.replace(/^\[|\]$/g, '');
  } catch {
    host = '';
  }
  const loopback = host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
  // One more host, named exactly: a daemon container on a compose network the test created.
  const allowed = process.env.E2E_ALLOWED_HOST ?? '';
  if (!loopback && !(allowed !== '' && host === allowed)) {
    emit({ fatal: `LIBRECHAT_CODE_BASEURL must be a loopback http URL, got ${JSON.stringify(BASE)}` });
    process.exit(2);
  }
}

const {
  ToolNode,
  AIMessage,
  fetchSessionFiles,
  createBashExecutionTool,
  createCodeExecutionTool,
} = await import('@librechat/agents');

// What LibreChat's backend uses for its own Code API calls (crud.js): axios, no auth here
// (sandboxd's default on loopback), a user id header, and the kind/id identity.
const USER_ID = 'e2e-user-0001';
const IDENTITY_QUERY = `?kind=user&id=${encodeURIComponent(USER_ID)}`;
// A daemon with auth.mode = "api_key" (a container off loopback): the key as LibreChat up to
// 0.8.5 sends it, from the variable it reads, on the tools' calls and the backend-style ones.
const API_KEY = process.env.LIBRECHAT_CODE_API_KEY ?? '';
const AUTH_HEADERS = API_KEY !== '' ? { 'X-API-Key': API_KEY } : undefined;
const TOOL_PARAMS = AUTH_HEADERS ? { authHeaders: AUTH_HEADERS } : {};
const http = axios.create({ validateStatus: () => true, timeout: 60000, proxy: false, headers: AUTH_HEADERS });
const baseNoSlash = BASE.replace(/\/+$/, '');

let callCounter = 0;
const nextCallId = () => `call_e2e_${++callCounter}`;

function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}

/** Invoke a tool exactly as LibreChat's ToolNode does: a tool_call carrying session hints. */
async function invokeTool(tool, args, { sessionId, injectedFiles } = {}) {
  const call = { id: nextCallId(), name: tool.name, args, type: 'tool_call' };
  if (sessionId != null) call.session_id = sessionId;
  if (injectedFiles != null) call._injected_files = injectedFiles;
  try {
    const msg = await tool.invoke(call);
    return {
      ok: true,
      status: msg.status ?? 'success',
      content: typeof msg.content === 'string' ? msg.content : JSON.stringify(msg.content),
      artifact: msg.artifact ?? null,
    };
  } catch (error) {
    return { ok: false, error: errorText(error) };
  }
}

/** One model turn through the real ToolNode (session tracking and file injection included). */
async function toolNodeTurn(node, name, args) {
  const id = nextCallId();
  const message = new AIMessage({ content: '', tool_calls: [{ id, name, args, type: 'tool_call' }] });
  const out = await node.invoke({ messages: [message] });
  const msgs = Array.isArray(out) ? out : out.messages;
  const msg = msgs.find((m) => m.tool_call_id === id) ?? msgs[0];
  return {
    status: msg.status ?? 'success',
    content: typeof msg.content === 'string' ? msg.content : JSON.stringify(msg.content),
    artifact: msg.artifact ?? null,
  };
}

function snapshotSession(sessions, key) {
  const s = sessions.get(key);
  if (s == null) return null;
  return {
    session_id: s.session_id,
    files: (s.files ?? []).map((f) => ({
      id: f.id,
      name: f.name,
      storage_session_id: f.storage_session_id,
      inherited: f.inherited === true,
    })),
  };
}

/** What LibreChat does with each new output: GET /download/{session}/{file} (15 s timeout). */
async function download(sessionId, fileId, { query = IDENTITY_QUERY } = {}) {
  const res = await http.get(`${baseNoSlash}/download/${sessionId}/${fileId}${query}`, {
    responseType: 'arraybuffer',
    timeout: 15000,
    headers: { 'User-Agent': 'LibreChat/1.0' },
  });
  const buf = Buffer.from(res.data ?? []);
  const isText = /^(text\/|application\/json)/.test(String(res.headers['content-type'] ?? ''));
  return {
    status: res.status,
    content_type: res.headers['content-type'] ?? null,
    content_disposition: res.headers['content-disposition'] ?? null,
    length: buf.length,
    sha256: sha256(buf),
    head_hex: buf.subarray(0, 8).toString('hex'),
    text: isText && buf.length <= 65536 ? buf.toString('utf8') : null,
  };
}

async function getJson(path) {
  const res = await http.get(`${baseNoSlash}${path}`, {
    timeout: 5000,
    headers: { 'User-Agent': 'LibreChat/1.0' },
  });
  return { status: res.status, body: res.data };
}

/** LibreChat's uploadCodeEnvFile: form-data with kind/id fields and, for nested names, filepath. */
async function upload(name, bytes) {
  const form = new FormData();
  form.append('kind', 'user');
  form.append('id', USER_ID);
  const basename = name.split('/').pop();
  const options = name.includes('/') ? { filename: basename, filepath: name } : { filename: name };
  form.append('file', Readable.from([bytes]), options);
  const res = await http.post(`${baseNoSlash}/upload`, form, {
    headers: {
      ...form.getHeaders(),
      'Content-Type': 'multipart/form-data',
      'User-Agent': 'LibreChat/1.0',
      'User-Id': USER_ID,
    },
    timeout: 120000,
    maxContentLength: 150 * 1024 * 1024,
    maxBodyLength: 150 * 1024 * 1024,
  });
  return { status: res.status, body: res.data };
}

async function del(path) {
  const res = await http.delete(`${baseNoSlash}${path}`, { headers: { 'User-Agent': 'LibreChat/1.0' } });
  return { status: res.status, body: res.data };
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const scenarios = {};

/** execute_code, lang py, a print: the content string and the artifact. */
scenarios.py_hello = async () => {
  const tool = createCodeExecutionTool(TOOL_PARAMS);
  const result = await invokeTool(tool, {
    lang: 'py',
    code: "import sys\nprint('hello from sandboxd')\nprint('major', sys.version_info[0])",
  });
  return { tool_name: tool.name, result };
};

/** execute_code whose user code fails: still a normal tool result (HTTP 200), stderr shown. */
scenarios.py_error = async () => {
  const tool = createCodeExecutionTool(TOOL_PARAMS);
  const result = await invokeTool(tool, {
    lang: 'py',
    code: "print('before the error')\nraise ValueError('boom-e2e')",
  });
  return { result };
};

/**
 * execute_code in any language (E2E_LANG, E2E_CODE from the environment): the content string,
 * the artifact, and the bytes of every generated file as LibreChat's backend downloads them.
 */
scenarios.lang = async () => {
  const tool = createCodeExecutionTool(TOOL_PARAMS);
  const result = await invokeTool(tool, { lang: process.env.E2E_LANG, code: process.env.E2E_CODE });
  const downloads = {};
  for (const f of result.artifact?.files ?? []) {
    downloads[f.name] = await download(f.storage_session_id ?? result.artifact.session_id, f.id);
  }
  return { result, downloads };
};

/** An unsupported language is rejected (400) and the tool reports "request was rejected". */
scenarios.bad_lang = async () => {
  // The tool's schema rejects such a language before sending, so post as a stale client would.
  const res = await http.post(
    `${baseNoSlash}/exec`,
    { lang: 'cobol', code: 'DISPLAY "x"' },
    { headers: { 'Content-Type': 'application/json', 'User-Agent': 'LibreChat/1.0' } },
  );
  return { status: res.status, body: res.data };
};

/**
 * Three turns through the real ToolNode: (1) matplotlib PNG + CSV under nested dirs + two text
 * files; (2) read the CSV, delete one file, modify one, add one; (3) list /mnt/data with bash.
 * ToolNode carries session_id and _injected_files between turns as LibreChat's does.
 */
scenarios.py_files = async () => {
  const codeTool = createCodeExecutionTool(TOOL_PARAMS);
  const bashTool = createBashExecutionTool(TOOL_PARAMS);
  const sessions = new Map();
  const node = new ToolNode({ tools: [codeTool, bashTool], sessions });
  const key = node.codeSessionKey ?? 'execute_code';

  const turn1 = await toolNodeTurn(node, 'execute_code', {
    lang: 'py',
    code: [
      'import os, csv',
      'import matplotlib',
      'import matplotlib.pyplot as plt',
      "os.makedirs('/mnt/data/charts', exist_ok=True)",
      "os.makedirs('/mnt/data/reports', exist_ok=True)",
      "with open('/mnt/data/reports/data.csv', 'w', newline='') as f:",
      '    w = csv.writer(f)',
      "    w.writerow(['name', 'score'])",
      "    for n, s in [('ann', 3), ('bob', 4), ('cy', 5)]:",
      '        w.writerow([n, s])',
      'fig, ax = plt.subplots()',
      "ax.bar(['ann', 'bob', 'cy'], [3, 4, 5])",
      "fig.savefig('/mnt/data/charts/plot.png')",
      "open('/mnt/data/notes.txt', 'w').write('delete me\\n')",
      "open('/mnt/data/scratch.md', 'w').write('# v1\\n')",
      "print('backend', matplotlib.get_backend())",
      "print('wrote files')",
    ].join('\n'),
  });
  const sessionAfter1 = snapshotSession(sessions, key);

  const downloads1 = {};
  for (const f of turn1.artifact?.files ?? []) {
    downloads1[f.name] = await download(f.storage_session_id ?? turn1.artifact.session_id, f.id);
  }

  const turn2 = await toolNodeTurn(node, 'execute_code', {
    lang: 'py',
    code: [
      'import csv, os',
      "rows = list(csv.DictReader(open('/mnt/data/reports/data.csv')))",
      "print('total', sum(int(r['score']) for r in rows))",
      "print('notes', open('/mnt/data/notes.txt').read().strip())",
      "os.remove('/mnt/data/notes.txt')",
      "open('/mnt/data/scratch.md', 'a').write('# v2\\n')",
      "open('/mnt/data/reports/summary.txt', 'w').write('total=12\\n')",
      "print('png', os.path.getsize('/mnt/data/charts/plot.png') > 0)",
    ].join('\n'),
  });
  const sessionAfter2 = snapshotSession(sessions, key);

  const downloads2 = {};
  for (const f of turn2.artifact?.files ?? []) {
    downloads2[f.name] = await download(f.storage_session_id ?? turn2.artifact.session_id, f.id);
  }

  const turn3 = await toolNodeTurn(node, 'bash_tool', {
    command: "cd /mnt/data && find . -type f | sort && echo '--' && cat scratch.md",
  });
  const sessionAfter3 = snapshotSession(sessions, key);

  return {
    turn1,
    session_after_1: sessionAfter1,
    downloads_1: downloads1,
    turn2,
    session_after_2: sessionAfter2,
    downloads_2: downloads2,
    turn3,
    session_after_3: sessionAfter3,
  };
};

/** bash_tool, including `python3 - <<'PY'` as LibreChat's write helper runs it, and args. */
scenarios.bash = async () => {
  const tool = createBashExecutionTool(TOOL_PARAMS);
  const heredoc = await invokeTool(tool, {
    command: [
      'echo "shell:$0 cwd:$(pwd)"',
      "python3 - <<'PY'",
      'import json, os',
      "os.makedirs('/mnt/data/out', exist_ok=True)",
      "open('/mnt/data/out/result.json', 'w').write(json.dumps({'sum': 1 + 2}))",
      "print(json.dumps({'py': 'ok', 'home': os.environ.get('HOME')}))",
      'PY',
      'cat /mnt/data/out/result.json; echo',
      'echo to-stderr >&2',
    ].join('\n'),
  });
  const args = await invokeTool(tool, { command: 'printf "[%s]" "$@"; echo', args: ['one', 'two words'] });
  const failing = await invokeTool(tool, { command: 'echo partial; exit 3' });
  return { tool_name: tool.name, heredoc, args, failing };
};

/** fetchSessionFiles (detail=full) against a session that holds files. */
scenarios.session_files = async () => {
  const tool = createCodeExecutionTool(TOOL_PARAMS);
  const made = await invokeTool(tool, {
    lang: 'py',
    code: [
      'import os',
      "os.makedirs('/mnt/data/sub/dir', exist_ok=True)",
      "open('/mnt/data/top.txt', 'w').write('top\\n')",
      "open('/mnt/data/sub/dir/deep.csv', 'w').write('a,b\\n1,2\\n')",
      "print('ok')",
    ].join('\n'),
  });
  const sid = made.artifact?.session_id;
  const listed = sid ? await fetchSessionFiles(baseNoSlash, sid, undefined, AUTH_HEADERS) : null;
  const raw_full = sid ? await getJson(`/files/${sid}?detail=full`) : null;
  const raw_normalized = sid ? await getJson(`/files/${sid}?detail=normalized`) : null;
  const raw_simple = sid ? await getJson(`/files/${sid}?detail=simple`) : null;
  const unknown = await fetchSessionFiles(baseNoSlash, 'AAAAAAAAAAAAAAAAAAAAA', undefined, AUTH_HEADERS);
  const unknown_raw = await getJson('/files/AAAAAAAAAAAAAAAAAAAAA?detail=full');
  return { made, listed, raw_full, raw_normalized, raw_simple, unknown, unknown_raw };
};

/**
 * LibreChat backend calls: upload a nested file, freshness (both forms), download, use it as an
 * execute_code input, delete via both route forms (twice each), then use a deleted file.
 */
scenarios.backend = async () => {
  const csvBytes = Buffer.from('name,score\nann,3\nbob,4\ncy,5\n', 'utf8');
  const binBytes = Buffer.from([0, 1, 2, 3, 254, 255, 10, 13, 0, 128]);

  const up = await upload('input/scores.csv', csvBytes);
  const sid = up.body?.storage_session_id ?? up.body?.session_id;
  const fid = up.body?.files?.[0]?.fileId;

  const up2 = await upload('blob.bin', binBytes);
  const sid2 = up2.body?.storage_session_id ?? up2.body?.session_id;
  const fid2 = up2.body?.files?.[0]?.fileId;

  const summary = await getJson(`/files/${sid}?detail=summary`);
  const summaryWithIdentity = await getJson(`/files/${sid}?detail=summary&kind=user&id=${USER_ID}`);
  const object = await getJson(`/sessions/${sid}/objects/${fid}${IDENTITY_QUERY}`);
  const objectPlain = await getJson(`/sessions/${sid}/objects/${fid}`);
  const dl = await download(sid, fid);
  const dlPlain = await download(sid, fid, { query: '' });
  const dl2 = await download(sid2, fid2);

  // Prime the uploaded file into an execute_code call as LibreChat does.
  const tool = createCodeExecutionTool(TOOL_PARAMS);
  const injected = [{ id: fid, resource_id: fid, name: 'input/scores.csv', storage_session_id: sid, kind: 'user' }];
  const exec = await invokeTool(
    tool,
    {
      lang: 'py',
      code: [
        'import csv',
        "rows = list(csv.DictReader(open('/mnt/data/input/scores.csv')))",
        "print('rows', len(rows), 'total', sum(int(r['score']) for r in rows))",
      ].join('\n'),
    },
    { sessionId: sid, injectedFiles: injected },
  );

  const delFiles1 = await del(`/files/${sid}/${fid}`);
  const delFiles2 = await del(`/files/${sid}/${fid}`);
  const delObjects1 = await del(`/sessions/${sid2}/objects/${fid2}`);
  const delObjects2 = await del(`/sessions/${sid2}/objects/${fid2}`);

  const objectAfter = await getJson(`/sessions/${sid}/objects/${fid}${IDENTITY_QUERY}`);
  const dlAfter = await download(sid, fid);
  const dl2After = await download(sid2, fid2);
  const unknownObject = await getJson(`/sessions/AAAAAAAAAAAAAAAAAAAAA/objects/BBBBBBBBBBBBBBBBBBBBB${IDENTITY_QUERY}`);

  const execDeleted = await invokeTool(
    tool,
    { lang: 'py', code: "print(open('/mnt/data/input/scores.csv').read())" },
    { sessionId: sid, injectedFiles: injected },
  );

  return {
    uploaded: { sha256: sha256(csvBytes), length: csvBytes.length, text: csvBytes.toString('utf8') },
    uploaded_bin: { sha256: sha256(binBytes), length: binBytes.length },
    upload: up,
    upload_bin: up2,
    summary,
    summary_with_identity: summaryWithIdentity,
    object,
    object_plain: objectPlain,
    download: dl,
    download_plain: dlPlain,
    download_bin: dl2,
    exec,
    delete_files_route: [delFiles1, delFiles2],
    delete_objects_route: [delObjects1, delObjects2],
    object_after_delete: objectAfter,
    download_after_delete: dlAfter,
    download_bin_after_delete: dl2After,
    unknown_object: unknownObject,
    exec_with_deleted_input: execDeleted,
    now: new Date().toISOString(),
  };
};

/**
 * LibreChat >= 0.8.6 with its Code API JWT on: the tools get `authHeaders` (LibreChat passes a
 * function that mints `Authorization: Bearer <JWT>`). The token comes from E2E_BEARER (minted by
 * the test with a key the daemon trusts); E2E_OTHER_BEARER names another subject.
 */
scenarios.jwt = async () => {
  const bearer = process.env.E2E_BEARER ?? '';
  const other = process.env.E2E_OTHER_BEARER ?? '';
  const authHeaders = async () => ({ Authorization: `Bearer ${bearer}` });
  const tool = createCodeExecutionTool({ authHeaders });
  const exec = await invokeTool(tool, {
    lang: 'py',
    code: "open('/mnt/data/jwt.txt', 'w').write('signed')\nprint('hello with a token')",
  });
  const sid = exec.artifact?.session_id ?? null;
  const listed = sid ? await fetchSessionFiles(baseNoSlash, sid, undefined, authHeaders) : null;
  const listedByOther = sid
    ? await fetchSessionFiles(baseNoSlash, sid, undefined, { Authorization: `Bearer ${other}` })
    : null;
  const bash = await invokeTool(createBashExecutionTool({ authHeaders: { Authorization: `Bearer ${bearer}` } }), {
    command: 'echo bash with a token',
  });
  const withoutToken = await invokeTool(createCodeExecutionTool(), { lang: 'py', code: "print('no token')" });
  const badToken = await invokeTool(createCodeExecutionTool({ authHeaders: { Authorization: 'Bearer x.y.z' } }), {
    lang: 'py',
    code: "print('bad token')",
  });
  return {
    exec,
    listed: listed?.map((f) => f.name) ?? null,
    listed_by_other: listedByOther?.map((f) => f.name) ?? null,
    bash,
    without_token: withoutToken,
    bad_token: badToken,
  };
};

// ---------------------------------------------------------------------------------------------

const name = process.argv[2];
if (!Object.hasOwn(scenarios, name)) {
  emit({ fatal: `unknown scenario ${JSON.stringify(name)}`, scenarios: Object.keys(scenarios) });
  process.exit(2);
}
try {
  const observed = await scenarios[name]();
  emit({ scenario: name, base_url: BASE, observed });
  process.exit(0);
} catch (error) {
  emit({ scenario: name, fatal: errorText(error), stack: error?.stack ?? null });
  process.exit(1);
}
