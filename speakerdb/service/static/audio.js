// Audio in the page: the microphone (AudioWorklet), WAV encoding, and decoding a file to
// 16 kHz mono to cut a voice's segments out of it. Everything stays in memory and is
// dropped with the page: nothing of a speaker's audio is written to browser storage.

export const RATE = 16000; // Hz: what the service embeds at; the browser resamples the microphone

/**
 * The microphone, delivering float32 blocks at ``RATE`` to ``onblock(samples)`` and the
 * input level (RMS in dBFS) to ``onlevel(db)``. ``stop()`` releases the device.
 */
export class Microphone {
  constructor({ onblock, onlevel }) {
    this.onblock = onblock;
    this.onlevel = onlevel;
    this.context = null;
    this.stream = null;
    this.samples = 0;
  }

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no access to a microphone here (it needs https or localhost)");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (e) {
      throw new Error(`no microphone: ${e.message || e.name}`);
    }
    this.context = new AudioContext({ sampleRate: RATE });
    await this.context.audioWorklet.addModule("/static/capture-worklet.js");
    const source = this.context.createMediaStreamSource(this.stream);
    const node = new AudioWorkletNode(this.context, "speakerdb-capture");
    node.port.onmessage = (e) => {
      const block = e.data;
      this.samples += block.length;
      let sum = 0;
      for (let i = 0; i < block.length; i += 1) sum += block[i] * block[i];
      const rms = Math.sqrt(sum / block.length);
      if (this.onlevel) this.onlevel(rms > 0 ? 20 * Math.log10(rms) : -100);
      if (this.onblock) this.onblock(block);
    };
    // Pulled by the graph only when connected to its destination: through a muted gain.
    const mute = this.context.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(this.context.destination);
    this.node = node;
  }

  /** Seconds captured so far. */
  get seconds() {
    return this.samples / RATE;
  }

  async stop() {
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) await this.context.close().catch(() => {});
    this.stream = null;
    this.context = null;
    this.node = null;
  }
}

/** Join float32 blocks into one array. */
export function concat(blocks) {
  const n = blocks.reduce((a, b) => a + b.length, 0);
  const out = new Float32Array(n);
  let offset = 0;
  for (const b of blocks) {
    out.set(b, offset);
    offset += b.length;
  }
  return out;
}

/** 16-bit PCM WAV bytes of mono float32 ``samples`` at ``rate``. */
export function wav(samples, rate = RATE) {
  const buffer = new ArrayBuffer(44 + 2 * samples.length);
  const v = new DataView(buffer);
  const text = (offset, s) => {
    for (let i = 0; i < s.length; i += 1) v.setUint8(offset + i, s.charCodeAt(i));
  };
  text(0, "RIFF");
  v.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, 2 * rate, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  text(36, "data");
  v.setUint32(40, 2 * samples.length, true);
  for (let i = 0; i < samples.length; i += 1) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

/** A recording (File or Blob) decoded to mono float32 at ``RATE``. */
export async function decode(file) {
  const context = new OfflineAudioContext(1, 1, RATE); // decodeAudioData resamples to its rate
  let buffer;
  try {
    buffer = await context.decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new Error(`this browser cannot decode ${file.name || "the recording"} (${e.message || e.name})`);
  }
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c += 1) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i += 1) mono[i] += data[i] / buffer.numberOfChannels;
  }
  return mono;
}

/** The spans ``[{start, end}]`` (seconds) of ``samples`` joined into one array. */
export function cut(samples, spans, rate = RATE) {
  return concat(
    spans.map((s) => samples.subarray(Math.max(0, Math.round(s.start * rate)), Math.round(s.end * rate))),
  );
}
