// modelport.js: a modelport model in the browser, on onnxruntime-web (WebGPU where the bundle
// and the browser have it, else WASM), with the model service behind it for fallback, updates
// and telemetry.
//
//   import { open } from "./modelport.js";
//   const model = await open("manifest.json");            // or { token, telemetry: true, ... }
//   const answer = await model.predict({ input: [[0, 1, ...]] });
//   answer.outputs.label.data;  answer.where;  // "local" or "service" (answer.reason says why)
//
// Inputs are checked against the signature with the messages modelport's Python side gives
// (modelport/signature.py); bad input throws InvalidInputError and never falls back. The model
// file is used only once its sha256 matches the manifest's.

export class ModelportError extends Error {}
export class InvalidInputError extends ModelportError {}
export class IntegrityError extends ModelportError {}

const RUNTIME = new URL("./ort/", import.meta.url).href;
const runtimes = {}; // backend -> its onnxruntime-web build, loaded on first use

function runtime(backend) {
  runtimes[backend] ??= import(backend === "webgpu" ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs").then((ort) => {
    ort.env.wasm.wasmPaths = RUNTIME;
    // More than one thread needs cross-origin isolation (SharedArrayBuffer); most hosts lack it.
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    return ort;
  });
  return runtimes[backend];
}

// A session on WebGPU when the bundle has its build (export web --webgpu) and the browser an
// adapter, else on WASM. The WebGPU build lacks some operators (ai.onnx.ml's, which scikit-learn
// models use): a model it cannot open runs on the WASM build, and onFailed hears why.
async function openSession(manifest, bytes, onFailed) {
  if (manifest.runtime?.backends?.includes("webgpu") && (await hasWebGPU())) {
    try {
      const ort = await runtime("webgpu");
      return { ort, backend: "webgpu", session: await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu"] }) };
    } catch (error) {
      onFailed(error);
    }
  }
  const ort = await runtime("wasm");
  return { ort, backend: "wasm", session: await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] }) };
}

async function hasWebGPU() {
  try {
    return Boolean(await navigator.gpu?.requestAdapter());
  } catch {
    return false;
  }
}

const DATATYPES = {
  bool: "BOOL", uint8: "UINT8", uint16: "UINT16", uint32: "UINT32", uint64: "UINT64",
  int8: "INT8", int16: "INT16", int32: "INT32", int64: "INT64", float16: "FP16",
  float32: "FP32", float64: "FP64", string: "BYTES",
};
const INT_RANGES = {
  int8: [-128, 127], int16: [-32768, 32767], int32: [-2147483648, 2147483647],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER], uint8: [0, 255],
  uint16: [0, 65535], uint32: [0, 4294967295], uint64: [0, Number.MAX_SAFE_INTEGER],
};
const PY_RANGES = { int64: ["-9223372036854775808", "9223372036854775807"], uint64: ["0", "18446744073709551615"] };
const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array,
  int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, uint16: Uint16Array,
  uint32: Uint32Array, uint64: BigUint64Array, bool: Uint8Array,
};
const MAX_RANK = 32;
const SLOW_IN_A_ROW = 3; // local predictions over the budget before the service takes over
const CACHE = "modelport-models";

// -- input checks: modelport/signature.py, message for message ------------------------------

function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  return quote + text.replaceAll("\\", "\\\\").replaceAll(quote, "\\" + quote) + quote;
}

function shapeText(shape) {
  return "[" + shape.join(", ") + "]";
}

function isTensor(value) {
  return value !== null && typeof value === "object" && ArrayBuffer.isView(value.data) && Array.isArray(value.shape);
}

function typedDtype(data) {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Float64Array) return "float64";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof BigUint64Array) return "uint64";
  for (const [dtype, kind] of Object.entries(ARRAYS)) if (data instanceof kind) return dtype;
  throw new InvalidInputError("unsupported typed array");
}

function kindOf(value) {
  if (Array.isArray(value)) return "list";
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) && !Object.is(value, -0) ? "int" : "float";
  if (typeof value === "string") return "str";
  return "dict";
}

// The shape and the flat values of nested arrays, walked one level at a time (json_leaves).
function leaves(value, maxElements) {
  const shape = [];
  let level = [value];
  for (;;) {
    const kinds = new Set(level.map(kindOf));
    if (kinds.size > 1 || !kinds.has("list")) {
      if (kinds.has("list")) throw new RangeError("ragged: lists beside single values");
      return { shape, values: level, kinds };
    }
    const width = level[0].length;
    if (level.length > 1 && level.some((item) => item.length !== width)) {
      throw new RangeError("ragged: nested lists of unequal length");
    }
    if (level.length * width > maxElements) return null;
    if (shape.length === MAX_RANK) throw new RangeError(`nested deeper than ${MAX_RANK} levels`);
    shape.push(width);
    level = level.length === 1 ? level[0] : level.flat();
  }
}

function jsonDtype(kinds) {
  if (kinds.size === 0) return "float64";
  if (kinds.size === 1 && kinds.has("str")) return "string";
  if ([...kinds].every((k) => k === "bool" || k === "int" || k === "float")) {
    return kinds.has("float") ? "float64" : kinds.has("int") ? "int64" : "bool";
  }
  if (kinds.has("null")) throw new RangeError("incomplete: null among the values");
  if (kinds.has("dict")) throw new RangeError("not a tensor: objects among the values");
  throw new RangeError("mixed: text and numbers together");
}

function canCast(from, to) {
  // numpy's same_kind casting between the dtypes JSON and typed arrays give
  if (from === to) return true;
  const kind = (d) => (d === "bool" ? "b" : d.startsWith("float") ? "f" : d.startsWith("u") ? "u" : "i");
  const [a, b] = [kind(from), kind(to)];
  if (a === "b") return true;
  if (b === "b") return false;
  if (a === "f") return b === "f";
  return true; // integers to integers (range checked) or floats
}

function checkOne(spec, value, maxElements) {
  const name = pyRepr(spec.name);
  let shape, values, dtype;
  if (isTensor(value)) {
    ({ shape } = value);
    dtype = typedDtype(value.data);
    values = dtype === "int64" || dtype === "uint64" ? Array.from(value.data, Number) : Array.from(value.data);
    const needs = shape.reduce((a, b) => a * b, 1);
    if (values.length !== needs) {
      throw new InvalidInputError(`input ${name}: data has ${values.length} values but shape ${shapeText(shape)} needs ${needs}`, spec.name);
    }
  } else {
    let walked;
    try {
      walked = leaves(value, maxElements);
      if (walked !== null) dtype = jsonDtype(walked.kinds);
    } catch (error) {
      if (!(error instanceof RangeError)) throw error;
      throw new InvalidInputError(`input ${name}: expected a ${spec.dtype} array, got a value numpy cannot read as one (${error.message})`, spec.name);
    }
    if (walked === null) {
      throw new InvalidInputError(`input ${name}: data has more elements than the limit of ${maxElements}; send smaller batches or raise InputLimits.max_elements`, spec.name);
    }
    ({ shape, values } = walked);
    if (dtype === "string" && spec.dtype !== "string") {
      throw new InvalidInputError(`input ${name}: expected dtype ${spec.dtype}, got text, which cannot be cast to it safely`, spec.name);
    }
  }
  if (values.length > maxElements) {
    throw new InvalidInputError(`input ${name}: ${values.length} elements is over the limit of ${maxElements}; send smaller batches or raise InputLimits.max_elements`, spec.name);
  }
  const want = spec.shape;
  const expected = "[" + want.map((d) => (d === -1 ? "?" : String(d))).join(", ") + "]";
  if (shape.length !== want.length) {
    throw new InvalidInputError(`input ${name}: expected rank ${want.length} with shape ${expected}, got rank ${shape.length} with shape ${shapeText(shape)}`, spec.name);
  }
  want.forEach((d, axis) => {
    if (d !== -1 && d !== shape[axis]) {
      throw new InvalidInputError(`input ${name}: expected shape ${expected}, got ${shapeText(shape)} (dim ${axis} must be ${d})`, spec.name);
    }
  });
  if (spec.dtype === "string") {
    if (dtype !== "string") throw new InvalidInputError(`input ${name}: expected strings, got ${dtype}`, spec.name);
    return { values, shape };
  }
  const range = INT_RANGES[spec.dtype];
  if (range && INT_RANGES[dtype] && values.length) {
    let [low, high] = [Infinity, -Infinity];
    for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
    if (low < range[0] || high > range[1]) {
      const [min, max] = PY_RANGES[spec.dtype] || range;
      throw new InvalidInputError(`input ${name}: expected ${spec.dtype} values in [${min}, ${max}], got values from ${low} to ${high}`, spec.name);
    }
  } else if (!canCast(dtype, spec.dtype)) {
    throw new InvalidInputError(`input ${name}: expected dtype ${spec.dtype}, got ${dtype}, which cannot be cast to it safely`, spec.name);
  }
  return { values: values.map((v) => (typeof v === "boolean" ? Number(v) : v)), shape };
}

/** Check `inputs` against `signature` as modelport's validate_inputs does; named {values, shape}. */
export function validateInputs(signature, inputs, maxElements = 16777216) {
  const specs = signature.inputs;
  const names = specs.map((s) => s.name);
  if (Array.isArray(inputs) || isTensor(inputs) || inputs === null || typeof inputs !== "object") {
    if (specs.length !== 1) {
      throw new InvalidInputError(`this model takes ${specs.length} inputs (${names.join(", ")}); pass a dict of name -> array`);
    }
    inputs = { [names[0]]: inputs };
  }
  const given = Object.keys(inputs);
  const unknown = given.filter((n) => !names.includes(n));
  const taken = names.map(pyRepr).join(", ");
  if (unknown.length) throw new InvalidInputError(`unknown input ${pyRepr(unknown[0])}; the model takes ${taken}`, unknown[0]);
  const missing = names.filter((n) => !given.includes(n));
  if (missing.length) throw new InvalidInputError(`missing input ${pyRepr(missing[0])}; the model takes ${taken}`, missing[0]);
  const batch = {};
  for (const spec of specs) batch[spec.name] = checkOne(spec, inputs[spec.name], maxElements);
  return batch;
}

// -- the model file: sha256, Cache Storage ------------------------------------------------------

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new IntegrityError("this page is not a secure context (https or localhost), so the model's sha256 cannot be checked");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function verified(bytes, manifest) {
  const got = await sha256Hex(bytes);
  if (got !== manifest.model.sha256) {
    throw new IntegrityError(`the model file of ${manifest.name}:${manifest.version} does not match its manifest (sha256 ${got.slice(0, 12)}..., expected ${manifest.model.sha256.slice(0, 12)}...): refused`);
  }
  return bytes;
}

function cacheKey(manifest, modelUrl) {
  // A query, not a fragment: Cache Storage matches requests without their fragments.
  const sep = modelUrl.includes("?") ? "&" : "?";
  return `${modelUrl}${sep}modelport=${encodeURIComponent(manifest.name)}&sha256=${manifest.model.sha256}`;
}

async function modelBytes(manifest, modelUrl, headers) {
  const store = globalThis.caches ? await caches.open(CACHE) : null;
  const key = cacheKey(manifest, modelUrl);
  if (store) {
    const hit = await store.match(key);
    if (hit) {
      try {
        return { bytes: await verified(new Uint8Array(await hit.arrayBuffer()), manifest), cached: true };
      } catch {
        await store.delete(key); // a damaged copy: fetch it again
      }
    }
  }
  const response = await fetch(modelUrl, { headers, cache: "no-store" });
  if (!response.ok) throw new ModelportError(`could not download the model: ${response.status} ${await errorText(response)}`);
  const bytes = await verified(new Uint8Array(await response.arrayBuffer()), manifest);
  if (store) await store.put(key, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
  return { bytes, cached: false };
}

// Cache Storage keeps the model in use and the one before it (to go back to without a download).
async function forgetOlder(manifest, keep) {
  if (!globalThis.caches) return;
  const store = await caches.open(CACHE);
  const mark = `modelport=${encodeURIComponent(manifest.name)}&sha256=`;
  for (const request of await store.keys()) {
    if (request.url.includes(mark) && !keep.some((k) => request.url === new URL(k).href)) await store.delete(request);
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || JSON.stringify(body);
  } catch {
    return response.statusText;
  }
}

function zeros(spec) {
  const shape = spec.shape.map((d) => (d === -1 ? 1 : d));
  const size = shape.reduce((a, b) => a * b, 1);
  return { values: new Array(size).fill(spec.dtype === "string" ? "" : 0), shape };
}

function ortTensor(ort, spec, { values, shape }) {
  if (spec.dtype === "string") return new ort.Tensor("string", values, shape);
  const kind = ARRAYS[spec.dtype];
  if (!kind) throw new ModelportError(`${spec.dtype} inputs cannot run in the browser`);
  const data = spec.dtype === "int64" || spec.dtype === "uint64" ? kind.from(values, (v) => BigInt(v)) : kind.from(values);
  return new ort.Tensor(spec.dtype, data, shape);
}

function plain(data) {
  return Array.from(data, (v) => (typeof v === "bigint" ? Number(v) : v));
}

// -- the model ------------------------------------------------------------------------------

class EdgeModel {
  constructor(manifestUrl, options) {
    this.manifestUrl = manifestUrl;
    this.options = options;
    this.headers = options.token ? { authorization: `Bearer ${options.token}` } : {};
    this.manifest = null;
    this.modelUrl = null;
    this.session = null;
    this.ort = null; // the onnxruntime-web build the session runs on
    this.backend = "wasm";
    this.localProblem = null; // why predictions go to the service, when they do
    this.slowInARow = 0;
    this.deviceMs = null;
    this.events = []; // {type, detail, at}: what the page may want to show
    this.telemetry = options.telemetry ? [] : null;
    this.timers = [];
    this.updating = false;
  }

  note(type, detail) {
    this.events.push({ type, detail, at: Date.now() });
    if (this.events.length > 100) this.events.shift();
    this.options.onEvent?.({ type, detail });
  }

  get budgetMs() {
    return this.options.budgetMs ?? this.manifest.budget_ms;
  }

  get serviceUrl() {
    const base = this.options.service ?? this.manifest.service;
    return base == null ? null : new URL(base, this.manifestUrl).href;
  }

  get updateUrl() {
    const service = this.serviceUrl;
    return service === null ? null : new URL(`web/${encodeURIComponent(this.manifest.name)}/manifest.json`, service).href;
  }

  async start() {
    this.manifest = await this.fetchManifest(this.manifestUrl);
    try {
      await this.useVersion(this.manifest, this.manifestUrl);
    } catch (error) {
      this.localProblem = `the local model cannot be used: ${error.message}`;
      this.record("failure", null);
      this.note("local-failed", this.localProblem);
    }
    const interval = this.options.updateIntervalS ?? this.manifest.update_interval_s;
    if (this.updateUrl !== null) {
      if (this.updateUrl !== this.manifestUrl) await this.checkForUpdate();
      if (interval > 0) this.timers.push(setInterval(() => this.checkForUpdate(), interval * 1000));
    }
    if (this.telemetry !== null) {
      this.timers.push(setInterval(() => this.flush(), (this.options.telemetryIntervalS ?? 10) * 1000));
      addEventListener("pagehide", () => this.flush(true));
    }
    return this;
  }

  async fetchManifest(url) {
    const response = await fetch(url, { headers: this.headers, cache: "no-store" });
    if (!response.ok) throw new ModelportError(`could not read the manifest ${url}: ${response.status} ${await errorText(response)}`);
    const manifest = await response.json();
    if (manifest.format !== 1 || !manifest.model?.sha256 || !manifest.signature) {
      throw new ModelportError(`${url} is not a modelport web manifest`);
    }
    return manifest;
  }

  // Download (or take from Cache Storage), verify, open a session and time it on this device.
  async useVersion(manifest, manifestUrl) {
    const modelUrl = new URL(manifest.model.url, manifestUrl).href;
    const { bytes, cached } = await modelBytes(manifest, modelUrl, this.headers);
    const opened = await openSession(manifest, bytes, (error) => this.note("webgpu-failed", `WASM runs it: ${error.message}`));
    const deviceMs = await this.measure(opened, manifest);
    const old = this.session;
    const kept = [cacheKey(manifest, modelUrl)];
    if (this.modelUrl) kept.push(cacheKey(this.manifest, this.modelUrl));
    await forgetOlder(manifest, kept);
    Object.assign(this, opened, { manifest, deviceMs, modelUrl, slowInARow: 0 });
    this.localProblem = deviceMs > this.budgetMs
      ? `too slow on this device: ${deviceMs.toFixed(1)} ms a prediction, over the budget of ${this.budgetMs} ms`
      : null;
    if (this.localProblem) this.note("slow-device", this.localProblem);
    this.note("loaded", { version: manifest.version, cached, deviceMs, backend: opened.backend });
    if (old) old.release();
  }

  // The device's own time for one row, measured on first use and kept per model file and backend.
  async measure({ ort, session, backend }, manifest) {
    const key = `modelport:ms:${backend}:${manifest.model.sha256}`;
    const kept = Number(globalThis.localStorage?.getItem(key));
    if (kept > 0 && !this.options.remeasure) return kept;
    const feeds = {};
    for (const spec of manifest.signature.inputs) feeds[spec.name] = ortTensor(ort, spec, zeros(spec));
    const times = [];
    for (let i = 0; i < 4; i += 1) {
      const started = performance.now();
      await session.run(feeds);
      times.push(performance.now() - started);
    }
    const ms = times.slice(1).sort((a, b) => a - b)[1]; // the first run warms up
    globalThis.localStorage?.setItem(key, String(ms));
    return ms;
  }

  async checkForUpdate() {
    const url = this.updateUrl;
    if (url === null || this.updating) return false; // one check at a time, however slow
    this.updating = true;
    try {
      return await this.update(url);
    } finally {
      this.updating = false;
    }
  }

  async update(url) {
    let next;
    try {
      next = await this.fetchManifest(url);
    } catch (error) {
      this.note("update-unreachable", error.message);
      return false;
    }
    if (next.model.sha256 === this.manifest.model.sha256 && this.session) return false;
    try {
      await this.useVersion(next, url);
    } catch (error) {
      this.record("failure", null);
      this.note("update-refused", `version ${next.version} was not taken, version ${this.manifest.version} stays: ${error.message}`);
      return false;
    }
    this.note("updated", { version: next.version });
    return true;
  }

  async predict(inputs) {
    const signature = this.manifest.signature;
    const batch = validateInputs(signature, inputs, this.manifest.limits?.max_elements);
    let reason = this.session ? this.localProblem : this.localProblem || "no local model";
    if (reason === null) {
      const started = performance.now();
      try {
        const feeds = {};
        for (const spec of signature.inputs) feeds[spec.name] = ortTensor(this.ort, spec, batch[spec.name]);
        const results = await this.session.run(feeds);
        const latencyMs = performance.now() - started;
        const outputs = {};
        for (const spec of signature.outputs) {
          const tensor = results[spec.name];
          outputs[spec.name] = { dtype: spec.dtype, shape: Array.from(tensor.dims), data: plain(tensor.data) };
        }
        this.record("local", latencyMs);
        const rows = batch[signature.inputs[0].name].shape[0] || 1;
        this.slowInARow = latencyMs / rows > this.budgetMs ? this.slowInARow + 1 : 0;
        if (this.slowInARow >= SLOW_IN_A_ROW) {
          this.localProblem = `too slow on this device: ${SLOW_IN_A_ROW} predictions in a row over the budget of ${this.budgetMs} ms a row`;
          this.note("slow-device", this.localProblem);
        }
        return { outputs, where: "local", backend: this.backend, version: this.manifest.version, latencyMs };
      } catch (error) {
        reason = `the local model failed: ${error.message}`;
        this.record("failure", null);
        this.note("local-failed", reason);
      }
    }
    return this.predictOnService(batch, reason);
  }

  async predictOnService(batch, reason) {
    const service = this.serviceUrl;
    if (service === null) throw new ModelportError(`cannot predict: ${reason}, and this bundle has no service to fall back on`);
    const signature = this.manifest.signature;
    const body = {
      inputs: signature.inputs.map((spec) => ({
        name: spec.name, shape: batch[spec.name].shape, datatype: DATATYPES[spec.dtype],
        data: spec.dtype === "bool" ? batch[spec.name].values.map(Boolean) : batch[spec.name].values,
      })),
    };
    const started = performance.now();
    const url = new URL(`v2/models/${encodeURIComponent(this.manifest.name)}/infer`, service);
    const response = await fetch(url, {
      method: "POST", body: JSON.stringify(body),
      headers: { ...this.headers, "content-type": "application/json" },
    });
    if (!response.ok) throw new ModelportError(`the service refused: ${response.status} ${await errorText(response)}`);
    const answer = await response.json();
    const latencyMs = performance.now() - started;
    this.record("fallback", latencyMs);
    const outputs = {};
    for (const out of answer.outputs) {
      const spec = signature.outputs.find((s) => s.name === out.name);
      outputs[out.name] = { dtype: spec ? spec.dtype : out.datatype, shape: out.shape, data: out.data.flat(Infinity) };
    }
    return { outputs, where: "service", backend: "service", version: Number(answer.model_version), latencyMs, reason, fallback: response.headers.get("x-modelport-fallback") };
  }

  // -- telemetry: counts and latencies only, never inputs or outputs ---------------------------

  record(event, latencyMs) {
    if (this.telemetry === null || !this.manifest) return;
    const backend = event === "fallback" ? "service" : this.backend;
    const entry = { version: this.manifest.version, backend, event };
    if (latencyMs !== null) entry.latency_ms = Math.round(latencyMs * 1000) / 1000;
    this.telemetry.push(entry);
    if (this.telemetry.length > 1000) this.telemetry.shift(); // bounded while offline
    if (this.telemetry.length >= 200) this.flush();
  }

  async flush(leaving = false) {
    const service = this.serviceUrl;
    if (this.telemetry === null || service === null || this.telemetry.length === 0) return;
    const records = this.telemetry.splice(0, 200);
    try {
      const response = await fetch(new URL("v2/edge/telemetry", service), {
        method: "POST", keepalive: leaving,
        headers: { ...this.headers, "content-type": "application/json" },
        body: JSON.stringify({ model: this.manifest.name, records }),
      });
      if (!response.ok && response.status >= 500) this.telemetry.unshift(...records);
    } catch {
      this.telemetry.unshift(...records); // offline: try again later
    }
  }

  close() {
    this.timers.forEach(clearInterval);
    this.session?.release();
  }
}

/** Open the model described by the manifest at `manifestUrl` (relative to the page). */
export async function open(manifestUrl = "manifest.json", options = {}) {
  return new EdgeModel(new URL(manifestUrl, location.href).href, options).start();
}

