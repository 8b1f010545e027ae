// The worker's browser page (docs/BROWSER.md). Live: microphone -> AudioWorklet (PCM16 frames at the AudioContext's
// rate) -> the native protocol's WebSocket at "/" (docs/PROTOCOL.md); partials in place, finals with their times.
// File: POST /v1/audio/transcriptions (verbose_json, word and segment times) with upload progress; SRT and WebVTT
// are built here from the answer's words, by the same rules as the worker's own (serving/subtitles.py), so one
// upload gives all three. The token lives in this tab only: memory and sessionStorage.
//
// Timing marks for measurements (bench/browser.py, tests/test_browser.py), in performance.getEntriesByName():
// "mic-open" (the microphone started), "first-frame" (its first frame reached the page), "session-started",
// "first-partial", "final" (detail: text, utterance, audio_end).

const FRAME_MS = 20; // audio per WebSocket message (the protocol takes 20-100 ms): the least added latency
const MAX_QUEUED_FRAMES = 500; // 10 s of audio held while the session is being set up
const TOKEN_KEY = "parakeet-token";
const RATE_MIN_HZ = 8000;
const RATE_MAX_HZ = 48000;
const METER_FLOOR_DB = -60;

const $ = (id) => document.getElementById(id);

// --- token -------------------------------------------------------------------------------------------------------
function initialToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token"); // out of the address bar (and of screenshots and shared links)
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    return fromUrl;
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function token() {
  return $("token").value.trim();
}

// --- words for what went wrong -----------------------------------------------------------------------------------
function refusalWords(status, serverWords, retryAfter) {
  const detail = serverWords ? ` (the worker says: ${serverWords})` : "";
  switch (status) {
    case 401:
      return "Token refused: the worker does not accept this token. Check the token field (or the ?token= in " +
        "the address) and try again.";
    case 409:
      return "Token already used: this token admits a single session, which is in use or over. Start a new " +
        `websocket job for a new token${detail}.`;
    case 429:
      return `Too many refused attempts from this address: wait ${retryAfter || "a minute"} s, then check the ` +
        "token.";
    case 503:
      return `Server overloaded or shutting down: it takes no new work now${detail}. Try again in a moment.`;
    default:
      return `The worker refused the request (HTTP ${status})${detail}.`;
  }
}

function microphoneWords(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone denied: the browser did not let this page use the microphone. Allow it in the site " +
        "settings (the icon left of the address) and press Start microphone again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found: connect one (or pick one in the browser's settings) and try again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be opened: another application may be using it.";
    default:
      return `The microphone could not be started: ${error && error.message ? error.message : error}.`;
  }
}

const INSECURE_WORDS = "The microphone needs a secure page: browsers allow it only on https:// addresses and on " +
  "http://localhost. Open this page through HTTPS or a tunnel to localhost (docs/BROWSER.md); files work here.";

const SERVER_ERROR_WORDS = {
  overloaded: "Server overloaded: it cannot keep up with this stream now; some audio was not transcribed.",
  stream_backlog: "Server overloaded: it is too far behind this stream; some audio was dropped.",
  idle_timeout: "The session ended: no audio reached the worker for too long.",
  max_session_length: "The session ended: it reached the worker's longest session.",
  server_shutdown: "The worker is shutting down: the session ends now.",
  cancelled: "The session's job was cancelled.",
  final_unavailable: "The last utterance could not be transcribed in time; its text is missing.",
  engine_closed: "The worker is shutting down and takes no new session.",
};

function serverErrorWords(message) {
  const words = SERVER_ERROR_WORDS[message.code];
  return words ? `${words} (${message.code})` : `The worker reported an error (${message.code}): ${message.message}`;
}

// --- status line and errors --------------------------------------------------------------------------------------
function setState(state, words) {
  const line = $("state");
  line.dataset.state = state;
  line.textContent = words;
}

function showError(where, words) {
  const box = $(where);
  box.textContent = words;
  box.hidden = false;
}

function clearError(where) {
  const box = $(where);
  box.textContent = "";
  box.hidden = true;
}

async function probe(tokenValue) {
  let response;
  try {
    response = await fetch("/page/access", { headers: { Authorization: `Bearer ${tokenValue}` }, cache: "no-store" });
  } catch (error) {
    return { ok: false, message: `Cannot reach the worker at ${window.location.host}: is it running? (${error.message})` };
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok) {
    return { ok: true, body };
  }
  return { ok: false, message: refusalWords(response.status, body.error, response.headers.get("Retry-After")) };
}

// --- time formats ------------------------------------------------------------------------------------------------
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function clock(seconds, separator) {
  let millis = Math.max(0, roundHalfEven(seconds * 1000));
  const hours = Math.floor(millis / 3600000);
  millis -= hours * 3600000;
  const minutes = Math.floor(millis / 60000);
  millis -= minutes * 60000;
  const secs = Math.floor(millis / 1000);
  millis -= secs * 1000;
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(secs, 2)}${separator}${pad(millis, 3)}`;
}

function shortClock(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, "0")}`;
}

function timeSpan(start, end) {
  const time = document.createElement("time");
  time.textContent = `${shortClock(start)}–${shortClock(end)}`;
  time.setAttribute("aria-label", `from ${start.toFixed(1)} to ${end.toFixed(1)} seconds`);
  return time;
}

// --- live captions -----------------------------------------------------------------------------------------------
const live = {
  context: null, stream: null, source: null, node: null, ws: null, tokenValue: "",
  queue: [], welcomed: false, started: false, stopping: false, stopped: false, partials: 0, framed: false, meterAt: 0,
};

function setLiveButtons(running) {
  $("start").disabled = running;
  $("finalize").disabled = !running || !live.started;
  $("stop").disabled = !running;
}

function showPartial(message) {
  const partial = $("partial");
  const committed = message.committed_text || "";
  const draft = message.draft_text || "";
  partial.querySelector(".committed").textContent = committed && draft ? `${committed} ` : committed;
  partial.querySelector(".draft").textContent = draft;
  live.partials += 1;
  if (live.partials === 1) {
    performance.mark("first-partial");
  }
}

function clearPartial() {
  const partial = $("partial");
  partial.querySelector(".committed").textContent = "";
  partial.querySelector(".draft").textContent = "";
}

function addFinal(message) {
  clearPartial();
  if (!message.text) {
    return;
  }
  performance.mark("final", {
    detail: { text: message.text, utterance: message.utterance, audio_start: message.audio_start, audio_end: message.audio_end },
  });
  const item = document.createElement("li");
  const text = document.createElement("span");
  text.textContent = message.text;
  item.append(timeSpan(message.audio_start, message.audio_end), " ", text);
  $("finals").append(item);
  const box = $("captions");
  box.scrollTop = box.scrollHeight;
}

function updateMeter(rms, peak) {
  const db = 20 * Math.log10(Math.max(rms, peak / 4, 1e-6));
  const percent = Math.round(Math.min(100, Math.max(0, ((db - METER_FLOOR_DB) / -METER_FLOOR_DB) * 100)));
  const meter = $("level");
  meter.firstElementChild.style.transform = `scaleX(${percent / 100})`;
  const now = performance.now();
  if (now - live.meterAt > 250) { // the accessible value changes at a readable pace
    live.meterAt = now;
    meter.setAttribute("aria-valuenow", String(percent));
  }
}

function onFrame(frame) {
  if (!live.framed) {
    live.framed = true;
    performance.mark("first-frame");
  }
  updateMeter(frame.rms, frame.peak);
  const ws = live.ws;
  if (live.stopping || !ws) {
    return;
  }
  if (live.started && ws.readyState === WebSocket.OPEN) {
    ws.send(frame.pcm);
  } else if (live.queue.length < MAX_QUEUED_FRAMES) {
    live.queue.push(frame.pcm); // said before the session started: sent once it has
  }
}

function onMessage(message) {
  switch (message.type) {
    case "welcome":
      if (!live.context) {
        return; // stopped before the session began
      }
      live.welcomed = true;
      $("model").textContent = `Model: ${message.model}`;
      live.ws.send(JSON.stringify({ action: "start", sample_rate: live.context.sampleRate, interim_results: true }));
      break;
    case "started":
      live.started = true;
      performance.mark("session-started");
      setState("listening", `Listening (${message.sample_rate} Hz): speak now.`);
      setLiveButtons(true);
      for (const pcm of live.queue.splice(0)) {
        live.ws.send(pcm);
      }
      break;
    case "transcription":
      if (message.is_final) {
        addFinal(message);
      } else {
        showPartial(message);
      }
      break;
    case "error":
      showError("live-error", serverErrorWords(message));
      break;
    case "stopped":
      live.stopped = true;
      setState("stopped", `Stopped: ${message.utterances} utterance(s), ${message.audio_seconds.toFixed(1)} s of ` +
        "audio transcribed.");
      break;
    default:
      break; // pong, info, config_updated: nothing to show
  }
}

async function onClose(event) {
  const { welcomed, stopped, tokenValue } = live;
  releaseMicrophone();
  live.ws = null;
  setLiveButtons(false);
  if (stopped) {
    return;
  }
  if (!welcomed) { // refused at the handshake: the browser hides the answer, the probe tells why
    const access = await probe(tokenValue);
    const words = access.ok ? `The worker closed the connection before the session began (code ${event.code}); ` +
      "try again." : access.message;
    showError("live-error", words);
    setState("error", "Not connected.");
    return;
  }
  const why = event.reason ? event.reason.replace(/_/g, " ") : `code ${event.code}`;
  setState(event.code === 1000 ? "stopped" : "error", `Disconnected: ${why}.`);
}

function releaseMicrophone() {
  if (live.stream) {
    live.stream.getTracks().forEach((track) => track.stop());
  }
  if (live.node) {
    live.node.port.onmessage = null;
    live.node.disconnect();
  }
  if (live.source) {
    live.source.disconnect();
  }
  if (live.context) {
    live.context.close().catch(() => {});
  }
  Object.assign(live, { context: null, stream: null, source: null, node: null, queue: [] });
  updateMeter(0, 0);
}

function fail(words) {
  releaseMicrophone();
  showError("live-error", words);
  setState("error", "Not connected.");
  setLiveButtons(false);
}

function newContext() {
  const context = new AudioContext();
  if (context.sampleRate >= RATE_MIN_HZ && context.sampleRate <= RATE_MAX_HZ) {
    return context;
  }
  context.close();
  return new AudioContext({ sampleRate: RATE_MAX_HZ }); // the protocol takes 8-48 kHz
}

async function startLive() {
  clearError("live-error");
  const tokenValue = token();
  if (!tokenValue) {
    showError("live-error", "Enter the token first (the field above, or ?token= in the address).");
    $("token").focus();
    return;
  }
  Object.assign(live, {
    tokenValue, welcomed: false, started: false, stopping: false, stopped: false, partials: 0, framed: false,
  });
  setLiveButtons(true);
  $("finals").replaceChildren();
  clearPartial();
  setState("checking", "Checking the token…");
  if (!window.isSecureContext || !navigator.mediaDevices) {
    fail(INSECURE_WORDS);
    return;
  }
  live.context = newContext(); // created within the click, so the browser lets it run
  const [access, moduleError] = await Promise.all([
    probe(tokenValue),
    live.context.audioWorklet.addModule("/static/pcm-worklet.js").then(() => null, (error) => error),
  ]);
  if (!access.ok) {
    fail(access.message);
    return;
  }
  if (moduleError) {
    fail(`The page could not load its audio module: ${moduleError.message}.`);
    return;
  }
  $("model").textContent = `Model: ${access.body.model}`;
  setState("microphone", "Waiting for the microphone…");
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (error) {
    fail(microphoneWords(error));
    return;
  }
  performance.mark("mic-open");
  const context = live.context;
  live.source = context.createMediaStreamSource(live.stream);
  live.node = new AudioWorkletNode(context, "pcm-framer", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { frameMs: FRAME_MS },
  });
  live.node.port.onmessage = (event) => onFrame(event.data);
  live.source.connect(live.node);
  live.node.connect(context.destination); // its output is silence; being connected keeps it running
  await context.resume();
  setState("connecting", "Connecting…");
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${window.location.host}/?token=${encodeURIComponent(tokenValue)}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => { onClose(event); };
  live.ws = ws;
}

function finalizeUtterance() {
  if (live.ws && live.started) {
    live.ws.send(JSON.stringify({ action: "finalize" }));
  }
}

function stopLive() {
  const ws = live.ws;
  live.stopping = true;
  $("finalize").disabled = true;
  $("stop").disabled = true;
  releaseMicrophone();
  if (ws && ws.readyState === WebSocket.OPEN && live.started) {
    setState("finishing", "Finishing the last utterance…");
    ws.send(JSON.stringify({ action: "stop" }));
  } else if (ws) {
    live.stopped = true;
    ws.close(1000, "stop");
    setState("stopped", "Stopped.");
  }
}

// --- file transcription ------------------------------------------------------------------------------------------
const MAX_CUE_S = 6.0; // serving/subtitles.py's rules, so the page's files equal the worker's srt/vtt answers
const MAX_CUE_CHARS = 84;
const CUE_GAP_S = 0.8;

function cuesFromWords(words, segments) {
  if (!words || words.length === 0) {
    return (segments || []).filter((s) => s.text).map((s) => ({ start: s.start, end: s.end, text: s.text }));
  }
  const cues = [];
  let current = [];
  const flush = () => {
    if (current.length > 0) {
      const first = current[0];
      cues.push({ start: first.start, end: Math.max(current[current.length - 1].end, first.start + 0.2),
        text: current.map((w) => w.word).join(" ") });
      current = [];
    }
  };
  for (const word of words) {
    if (current.length > 0) {
      const textLength = current.reduce((n, w) => n + w.word.length + 1, 0) + word.word.length;
      if (word.start - current[current.length - 1].end >= CUE_GAP_S || word.end - current[0].start > MAX_CUE_S ||
          textLength > MAX_CUE_CHARS) {
        flush();
      }
    }
    current.push(word);
    if (/[.!?]$/.test(word.word)) {
      flush();
    }
  }
  flush();
  return cues;
}

function wrap(text, width = Math.floor(MAX_CUE_CHARS / 2)) {
  if (text.length <= width) {
    return text;
  }
  const end = Math.floor(text.length / 2) + Math.floor(width / 4);
  const cut = text.lastIndexOf(" ", end - 1);
  return cut <= 0 ? text : `${text.slice(0, cut)}\n${text.slice(cut + 1)}`;
}

function toSrt(cues) {
  return cues.map((c, i) => `${i + 1}\n${clock(c.start, ",")} --> ${clock(c.end, ",")}\n${wrap(c.text)}\n`).join("\n");
}

function toVtt(cues) {
  return `WEBVTT\n\n${cues.map((c) => `${clock(c.start, ".")} --> ${clock(c.end, ".")}\n${wrap(c.text)}\n`).join("\n")}`;
}

function setDownload(id, text, type, name) {
  const link = $(id);
  if (link.href && link.href.startsWith("blob:")) {
    URL.revokeObjectURL(link.href);
  }
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
}

function showTranscript(body, fileName) {
  $("file-text").textContent = body.text || "(no speech found)";
  const list = $("segments");
  list.replaceChildren(...(body.segments || []).map((segment) => {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = segment.text;
    item.append(timeSpan(segment.start, segment.end), " ", text);
    return item;
  }));
  const cues = cuesFromWords(body.words, body.segments);
  const stem = fileName.replace(/\.[^.]*$/, "") || "transcript";
  setDownload("srt-link", toSrt(cues), "application/x-subrip", `${stem}.srt`);
  setDownload("vtt-link", toVtt(cues), "text/vtt", `${stem}.vtt`);
  $("file-result").hidden = false;
}

function fileFailed(words) {
  $("upload").hidden = true;
  $("file-state").textContent = "";
  showError("file-error", words);
}

function transcribeFile(file) {
  clearError("file-error");
  $("file-result").hidden = true;
  const tokenValue = token();
  if (!tokenValue) {
    showError("file-error", "Enter the token first (the field above, or ?token= in the address).");
    $("token").focus();
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", "parakeet");
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  const progress = $("upload");
  progress.hidden = false;
  progress.value = 0;
  $("file-state").textContent = `Uploading ${file.name}…`;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/audio/transcriptions");
  xhr.setRequestHeader("Authorization", `Bearer ${tokenValue}`);
  xhr.upload.onprogress = (event) => {
    if (event.lengthComputable) {
      const percent = Math.round((event.loaded / event.total) * 100);
      progress.value = percent;
      $("file-state").textContent = `Uploading ${file.name}: ${percent}%`;
    }
  };
  xhr.upload.onload = () => {
    progress.removeAttribute("value"); // indeterminate while the worker transcribes
    $("file-state").textContent = `Transcribing ${file.name}…`;
  };
  xhr.onerror = () => fileFailed(`Cannot reach the worker at ${window.location.host}: is it running?`);
  xhr.onload = () => {
    let body = {};
    try {
      body = JSON.parse(xhr.responseText);
    } catch (error) {
      body = {};
    }
    if (xhr.status !== 200) {
      const serverWords = body.error && body.error.message;
      const words = [401, 409, 429, 503].includes(xhr.status)
        ? refusalWords(xhr.status, serverWords, xhr.getResponseHeader("Retry-After"))
        : `The worker could not transcribe ${file.name} (HTTP ${xhr.status}): ${serverWords || "no reason given"}.`;
      fileFailed(words);
      return;
    }
    progress.hidden = true;
    $("file-state").textContent = `${file.name}: ${body.duration.toFixed(1)} s transcribed.`;
    showTranscript(body, file.name);
  };
  xhr.send(form);
}

// --- wiring ------------------------------------------------------------------------------------------------------
function init() {
  const field = $("token");
  field.value = initialToken();
  field.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, token()));
  $("start").addEventListener("click", () => { startLive(); });
  $("finalize").addEventListener("click", finalizeUtterance);
  $("stop").addEventListener("click", stopLive);
  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) {
      transcribeFile(file);
    }
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) {
      transcribeFile(file);
    }
  });
}

init();
