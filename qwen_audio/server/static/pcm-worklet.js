// Audio worklet of the live-captions mode: the microphone at the AudioContext's rate (24 kHz,
// what /v1/realtime takes) as 16-bit PCM, posted to the page in 100 ms pieces.
"use strict";

class Pcm16 extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 10);
    this.piece = new Int16Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (const x of channel) {
      const v = Math.max(-1, Math.min(1, x));
      this.piece[this.filled++] = v < 0 ? v * 32768 : v * 32767;
      if (this.filled === this.size) {
        this.port.postMessage(this.piece.buffer, [this.piece.buffer]); // detaches it
        this.piece = new Int16Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16", Pcm16);
