// Live captions: the microphone streamed to /v1/realtime (OpenAI's Realtime API, a transcription
// session with server-side turn detection); each utterance becomes a caption line, filled in
// as its transcription streams. Loaded after app.js (uses its `ui`, `showError`).
"use strict";

const captions = {
  button: document.getElementById("captions"),
  panel: document.getElementById("captions-panel"),
  lines: document.getElementById("captions-lines"),
  ws: null, ctx: null, stream: null, pending: new Set(), stopTimer: null,
};

function captionLine(item) {
  let line = captions.lines.querySelector(`[data-item="${CSS.escape(item)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.className = "caption live";
    line.dataset.item = item;
    captions.lines.appendChild(line);
    captions.panel.scrollTop = captions.panel.scrollHeight;
  }
  return line;
}

function onCaptionEvent(e) {
  switch (e.type) {
    case "input_audio_buffer.speech_started":
      captionLine(e.item_id).textContent = "…";
      break;
    case "input_audio_buffer.committed":
      captions.pending.add(e.item_id);
      captionLine(e.item_id);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const line = captionLine(e.item_id);
      line.textContent = (line.dataset.text = (line.dataset.text || "") + e.delta);
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const line = captionLine(e.item_id);
      line.textContent = e.transcript;
      line.className = "caption final";
      if (!e.transcript) line.remove(); // no words in it
      captions.pending.delete(e.item_id);
      break;
    }
    case "conversation.item.input_audio_transcription.failed":
      captionLine(e.item_id).textContent = "(" + e.error.message + ")";
      captionLine(e.item_id).className = "caption failed";
      captions.pending.delete(e.item_id);
      break;
    case "error":
      if (e.error.code !== "input_audio_buffer_commit_empty") showError("Live captions: " + e.error.message);
      break;
  }
  if (captions.stopTimer && captions.pending.size === 0) closeCaptions();
}

async function startCaptions() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime?intent=transcription`;
  // A browser cannot set headers on a websocket: the key travels as a subprotocol.
  const protocols = ["realtime"];
  if (ui.apiKey.value) protocols.push("openai-insecure-api-key." + ui.apiKey.value);
  // Made first, while the click still counts as a user gesture: else it may start suspended.
  const ctx = new AudioContext({ sampleRate: 24000 });
  captions.ctx = ctx;
  captions.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const ws = new WebSocket(url, protocols);
  captions.ws = ws;
  ws.onmessage = (m) => onCaptionEvent(JSON.parse(m.data));
  ws.onclose = (e) => {
    if (captions.ws === ws && !captions.stopTimer) showError(`Live captions: connection closed (${e.code})`);
    stopCaptions(true);
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("cannot connect")); });
  ws.send(JSON.stringify({
    type: "session.update",
    session: { type: "transcription", audio: { input: {
      format: { type: "audio/pcm", rate: 24000 },
      turn_detection: { type: "server_vad", silence_duration_ms: 500, prefix_padding_ms: 300 },
    } } },
  }));
  await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm16");
  node.port.onmessage = (m) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const bytes = new Uint8Array(m.data);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: btoa(binary) }));
  };
  const mute = ctx.createGain();
  mute.gain.value = 0; // the worklet runs only when it leads to the output
  ctx.createMediaStreamSource(captions.stream).connect(node).connect(mute).connect(ctx.destination);
  await ctx.resume();
  captions.panel.hidden = false;
  captions.button.classList.add("recording");
  captions.button.textContent = "■ Stop captions";
}

// Stops the microphone; what was being said is committed, and the socket closes once the last
// transcriptions arrived (or after 5 s).
function stopCaptions(closed = false) {
  if (captions.stream) captions.stream.getTracks().forEach((t) => t.stop());
  if (captions.ctx) captions.ctx.close();
  captions.stream = captions.ctx = null;
  captions.button.classList.remove("recording");
  captions.button.textContent = "Live captions";
  const ws = captions.ws;
  if (closed || !ws || ws.readyState !== WebSocket.OPEN) { captions.ws = null; return; }
  ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  captions.stopTimer = setTimeout(closeCaptions, 5000);
  setTimeout(() => { if (captions.pending.size === 0) closeCaptions(); }, 1000);
}

function closeCaptions() {
  clearTimeout(captions.stopTimer);
  captions.stopTimer = null;
  if (captions.ws) { const ws = captions.ws; captions.ws = null; ws.close(); }
}

captions.button.addEventListener("click", async () => {
  if (captions.ws) return stopCaptions();
  try {
    await startCaptions();
  } catch (e) {
    showError("Live captions: " + e.message);
    stopCaptions();
    closeCaptions();
  }
});
