// AudioWorklet module: the microphone's float samples -> PCM16 little-endian mono frames of `frameMs` at the
// AudioContext's own rate (no resampling here: the worker resamples), posted to the page with the frame's RMS
// and peak level for the meter. Channels beyond the first are averaged in (a stereo device still gives mono).

class PcmFramer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = options.processorOptions.frameMs;
    this.frameSamples = Math.max(1, Math.round((sampleRate * frameMs) / 1000));
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) {
      return true; // no input yet (the source is not connected or the track is muted)
    }
    const length = channels[0].length;
    const count = channels.length;
    for (let i = 0; i < length; i += 1) {
      let sample = channels[0][i];
      for (let c = 1; c < count; c += 1) {
        sample += channels[c][i];
      }
      sample /= count;
      if (sample > 1) sample = 1;
      else if (sample < -1) sample = -1;
      this.sumSquares += sample * sample;
      const magnitude = Math.abs(sample);
      if (magnitude > this.peak) this.peak = magnitude;
      this.frame[this.filled] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      this.filled += 1;
      if (this.filled === this.frameSamples) {
        this.post();
      }
    }
    return true;
  }

  post() {
    const rms = Math.sqrt(this.sumSquares / this.filled);
    const buffer = this.frame.buffer;
    this.port.postMessage({ pcm: buffer, rms, peak: this.peak }, [buffer]);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

registerProcessor("pcm-framer", PcmFramer);
