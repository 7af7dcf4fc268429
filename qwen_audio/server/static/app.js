// qwen-audio web page: a voice chat against this server's /v1/chat/completions.
// No build step, no dependencies. The conversation lives in `history` (OpenAI message format,
// audio as base64) and is sent whole on every turn.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  chat: $("chat"), empty: $("empty"), text: $("text"), composer: $("composer"),
  record: $("record"), file: $("file"), send: $("send"), stop: $("stop"),
  regenerate: $("regenerate"), clear: $("clear"), speak: $("speak"), handsfree: $("handsfree"),
  pending: $("pending"), pendingAudio: $("pending-audio"), pendingRemove: $("pending-remove"),
  model: $("model"), status: $("status"), statusText: $("status-text"), settings: $("settings"),
  system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  apiKey: $("api-key"), level: $("mic-level"),
};

const state = {
  history: [], // [{role, content}] as sent to the API; user audio parts carry base64
  pending: null, // {blob, url, format} attached but not sent yet
  controller: null, // AbortController of the answer being streamed
  recorder: null,
  modelName: "",
};

// ---- settings kept across reloads --------------------------------------------------------

for (const [key, el] of [["apiKey", ui.apiKey], ["system", ui.system], ["speak", ui.speak]]) {
  const saved = localStorage.getItem("qwen-audio." + key);
  if (saved !== null) {
    if (el.type === "checkbox") el.checked = saved === "1"; else el.value = saved;
  }
  el.addEventListener("change", () => {
    localStorage.setItem("qwen-audio." + key, el.type === "checkbox" ? (el.checked ? "1" : "0") : el.value);
  });
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (ui.apiKey.value) h["Authorization"] = "Bearer " + ui.apiKey.value;
  return h;
}

// ---- server status and model name --------------------------------------------------------

async function pollHealth() {
  try {
    const r = await fetch("/health", { cache: "no-store" });
    const h = await r.json();
    state.modelName = h.model || state.modelName;
    ui.model.textContent = state.modelName;
    const busy = (h.waiting || 0) > 0;
    ui.status.dataset.state = r.ok ? (busy ? "busy" : "ok") : "down";
    ui.statusText.textContent = r.ok
      ? `ready · ${h.running || 0} running, ${h.waiting || 0} waiting`
      : "engine unavailable";
  } catch (e) {
    ui.status.dataset.state = "down";
    ui.statusText.textContent = "offline";
  }
}
pollHealth();
setInterval(pollHealth, 5000);

// ---- rendering ---------------------------------------------------------------------------

function bubble(role, cls = "") {
  ui.empty.hidden = true;
  const div = document.createElement("div");
  div.className = `msg ${role} ${cls}`.trim();
  ui.chat.appendChild(div);
  return div;
}

function scrollDown() {
  ui.chat.scrollTop = ui.chat.scrollHeight;
}

function renderUser(text, audioUrl) {
  const div = bubble("user");
  if (audioUrl) {
    const player = document.createElement("audio");
    player.controls = true;
    player.src = audioUrl;
    div.appendChild(player);
  }
  if (text) {
    const span = document.createElement("span");
    span.className = "text";
    span.textContent = text;
    div.appendChild(span);
  }
  scrollDown();
}

function showError(message) {
  bubble("error").textContent = message;
  scrollDown();
}

// ---- audio input: microphone and files ---------------------------------------------------

function formatOf(type) {
  const t = (type || "").toLowerCase();
  for (const f of ["webm", "ogg", "wav", "mp3", "mpeg", "flac", "mp4", "m4a", "aac"]) {
    if (t.includes(f)) return f === "mpeg" ? "mp3" : f === "mp4" ? "m4a" : f;
  }
  return "wav";
}

function attach(blob) {
  if (state.pending) URL.revokeObjectURL(state.pending.url);
  state.pending = { blob, url: URL.createObjectURL(blob), format: formatOf(blob.type) };
  ui.pendingAudio.src = state.pending.url;
  ui.pending.hidden = false;
}

function detach() {
  state.pending = null;
  ui.pendingAudio.removeAttribute("src");
  ui.pending.hidden = true;
}

ui.pendingRemove.addEventListener("click", () => {
  if (state.pending) URL.revokeObjectURL(state.pending.url);
  detach();
});

ui.file.addEventListener("change", () => {
  if (ui.file.files.length) attach(ui.file.files[0]);
  ui.file.value = "";
});

function recorderType() {
  for (const t of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"]) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
  }
  return "";
}

// Starts recording; resolves with the recorded Blob once `stopRecording()` is called (or the
// voice-activity detector of hands-free mode decides the user is done).
async function startRecording({ autoStop = false } = {}) {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("This browser cannot record audio here (it needs https or localhost).");
    return null;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const type = recorderType();
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
  const chunks = [];
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  state.recorder = recorder;
  ui.record.classList.add("recording");
  ui.record.textContent = "■ Stop recording";
  const vad = autoStop ? watchVoice(stream, () => stopRecording()) : null;
  const done = new Promise((resolve) => {
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      if (vad) vad.close();
      state.recorder = null;
      ui.record.classList.remove("recording");
      ui.record.textContent = "● Record";
      ui.level.hidden = true;
      resolve(new Blob(chunks, { type: recorder.mimeType || type || "audio/webm" }));
    };
  });
  recorder.start(250);
  return done;
}

function stopRecording() {
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
}

// A small energy-based voice-activity detector: waits for speech, then stops after
// 1.2 s of quiet (or 30 s in all).
function watchVoice(stream, onDone) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let spoke = false, quietSince = performance.now();
  const started = performance.now();
  ui.level.hidden = false;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const rms = Math.sqrt(sum / buf.length);
    const now = performance.now();
    ui.level.textContent = spoke ? "listening… (stops when you pause)" : "listening… speak now";
    if (rms > 0.02) { spoke = true; quietSince = now; }
    if ((spoke && now - quietSince > 1200) || now - started > 30000) onDone();
  }, 50);
  return { close: () => { clearInterval(timer); ctx.close(); } };
}

ui.record.addEventListener("click", async () => {
  if (state.recorder) return stopRecording();
  try {
    const blob = await startRecording();
    if (blob && blob.size) attach(blob);
  } catch (e) {
    showError("Microphone: " + e.message);
  }
});

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// ---- sending and streaming ---------------------------------------------------------------

function busy(on) {
  ui.send.disabled = on;
  ui.regenerate.disabled = on;
  ui.stop.hidden = !on;
}

async function send() {
  const text = ui.text.value.trim();
  const pending = state.pending;
  if (!text && !pending) return;
  const content = [];
  if (pending) {
    const data = await blobToBase64(pending.blob);
    content.push({ type: "input_audio", input_audio: { data, format: pending.format } });
  }
  if (text) content.push({ type: "text", text });
  state.history.push({ role: "user", content });
  renderUser(text, pending && pending.url);
  ui.text.value = "";
  detach();
  await answer();
}

function requestBody() {
  const messages = [];
  if (ui.system.value.trim()) messages.push({ role: "system", content: ui.system.value.trim() });
  messages.push(...state.history);
  const body = { model: state.modelName || "default", messages, stream: true,
                 stream_options: { include_usage: true } };
  if (ui.temperature.value !== "") body.temperature = Number(ui.temperature.value);
  if (ui.maxTokens.value !== "") body.max_tokens = Number(ui.maxTokens.value);
  return body;
}

async function answer() {
  const div = bubble("assistant", "streaming");
  const span = document.createElement("span");
  span.className = "text";
  div.appendChild(span);
  const speaker = speakerFor();
  let text = "", usage = null, stopped = false;
  state.controller = new AbortController();
  busy(true);
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()),
      signal: state.controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      const message = (err.error && err.error.message) || r.statusText;
      if (r.status === 401) ui.settings.open = true;
      throw new Error(`${r.status}: ${message}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            span.textContent = text;
            speaker.feed(delta.content);
            scrollDown();
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else {
      div.remove(); // the user turn stays in the history: regenerate asks again
      showError(e.message);
      busy(false);
      state.controller = null;
      return;
    }
  }
  div.classList.remove("streaming");
  state.history.push({ role: "assistant", content: text });
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = stopped ? "stopped"
    : usage ? `${usage.completion_tokens} tokens · ${usage.prompt_tokens} in (${usage.prompt_tokens_details.audio_tokens} audio)` : "";
  div.appendChild(meta);
  busy(false);
  state.controller = null;
  speaker.finish(stopped);
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  if (!state.controller) send();
});

ui.text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  speechSynthesis.cancel();
});

ui.regenerate.addEventListener("click", () => {
  if (state.controller) return;
  // Drop the last answer (if any) and ask again for the same user turn.
  if (state.history.length && state.history[state.history.length - 1].role === "assistant") {
    state.history.pop();
    const answers = ui.chat.querySelectorAll(".msg.assistant");
    if (answers.length) answers[answers.length - 1].remove();
  }
  ui.chat.querySelectorAll(".msg.error").forEach((el) => el.remove());
  if (state.history.length) answer();
});

ui.clear.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  speechSynthesis.cancel();
  state.history = [];
  ui.chat.querySelectorAll(".msg").forEach((el) => el.remove());
  ui.empty.hidden = false;
});

// Reload while history exists: keep the conversation, as a refresh would otherwise drop it.
const SAVED = "qwen-audio.session";
window.addEventListener("pagehide", () => {
  try {
    sessionStorage.setItem(SAVED, JSON.stringify(state.history));
  } catch (e) { /* too large for sessionStorage: not kept */ }
});
try {
  for (const m of JSON.parse(sessionStorage.getItem(SAVED) || "[]")) {
    state.history.push(m);
    if (m.role === "assistant") bubble("assistant").textContent = m.content;
    else {
      const parts = typeof m.content === "string" ? [{ type: "text", text: m.content }] : m.content;
      const audio = parts.find((p) => p.type === "input_audio");
      const text = parts.filter((p) => p.type === "text").map((p) => p.text).join("\n");
      const url = audio ? `data:audio/${audio.input_audio.format};base64,${audio.input_audio.data}` : null;
      renderUser(text, url);
    }
  }
} catch (e) { sessionStorage.removeItem(SAVED); }

// ---- read-aloud and hands-free voice chat ------------------------------------------------

// Speaks an answer sentence by sentence while it streams, so speech starts early.
function speakerFor() {
  const on = ui.speak.checked || ui.handsfree.checked;
  let buffer = "";
  let queued = 0;
  let finished = false;
  const say = (s) => {
    if (!on || !s.trim() || !window.speechSynthesis) return;
    const u = new SpeechSynthesisUtterance(s.trim());
    queued += 1;
    u.onend = u.onerror = () => { queued -= 1; if (finished && queued === 0) afterSpeech(); };
    speechSynthesis.speak(u);
  };
  return {
    feed(delta) {
      buffer += delta;
      const m = buffer.match(/^[\s\S]*[.!?。！？]\s/);
      if (m) { say(m[0]); buffer = buffer.slice(m[0].length); }
    },
    finish(stopped) {
      finished = true;
      if (!stopped) say(buffer);
      if (queued === 0) afterSpeech();
    },
  };
}

// Hands-free: listen, send when the user pauses, read the answer aloud, listen again.
async function listenOnce() {
  if (!ui.handsfree.checked || state.recorder || state.controller) return;
  try {
    const blob = await startRecording({ autoStop: true });
    if (!ui.handsfree.checked) return;
    if (blob && blob.size) {
      attach(blob);
      await send();
    }
  } catch (e) {
    ui.handsfree.checked = false;
    showError("Microphone: " + e.message);
  }
}

function afterSpeech() {
  if (ui.handsfree.checked) setTimeout(listenOnce, 300);
}

ui.handsfree.addEventListener("change", () => {
  if (ui.handsfree.checked) listenOnce();
  else stopRecording();
});
