// Attention Focus viewer data: reads a view file (see nodes/viewer_data.py) and answers what the viewer
// draws. No side effects on import (ComfyUI loads every .js under web/ as an extension module).
//
// A view file is a safetensors file: 8-byte little-endian header length, a JSON header (tensor table
// plus "__metadata__"), then the raw bytes. Tensor "words" is uint8 (batch, words, h, w); a value q of word
// i in image b stands for lo[b][i] + q / 255 * (hi[b][i] - lo[b][i]), an attention share (0..1).

export const ROUTE = "/attention_focus/view/";

export async function fetchView(api, id) {
  const res = await api.fetchApi(`${ROUTE}${id}.view.safetensors`, { cache: "no-store" });
  if (!res.ok) throw new Error(`view ${id}: HTTP ${res.status}`);
  return parseView(await res.arrayBuffer());
}

export function parseView(buffer) {
  const dv = new DataView(buffer);
  const n = Number(dv.getBigUint64(0, true));
  const table = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, n)));
  const header = JSON.parse(table.__metadata__.attention_focus_view);
  const tensors = {};
  for (const [name, t] of Object.entries(table)) {
    if (name === "__metadata__") continue;
    if (t.dtype !== "U8") throw new Error(`view tensor ${name}: dtype ${t.dtype}, expected U8`);
    const [a, b] = t.data_offsets;
    tensors[name] = { shape: t.shape, data: new Uint8Array(buffer, 8 + n + a, b - a) };
  }
  return new View(header, tensors);
}

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export class View {
  constructor(header, tensors) {
    this.h = header;
    this.t = tensors;
    this.words = header.words;
    this.batch = header.batch;
    this.lat = header.latent; // [h, w]
    this.lut = hexBytes(header.lut); // 256 × RGB
    this.frames = header.frames || {};
  }

  // {data (Uint8Array of (words, h, w)), lo[], hi[]} of one image, for the main maps or one history frame
  plane(b, frame = null) {
    const [h, w] = this.lat;
    const n = this.words.length;
    const size = n * h * w;
    if (frame && this.t[`frames.${frame.kind}`]) {
      const fr = this.frames[frame.kind];
      const f = fr.labels.length;
      const off = (b * f + frame.index) * size;
      return { data: this.t[`frames.${frame.kind}`].data.subarray(off, off + size),
               lo: fr.lo[b][frame.index], hi: fr.hi[b][frame.index] };
    }
    return { data: this.t.words.data.subarray(b * size, (b + 1) * size), lo: this.h.lo[b], hi: this.h.hi[b] };
  }

  // share (0..1) of word i at latent cell (y, x)
  value(plane, i, y, x) {
    const [h, w] = this.lat;
    const q = plane.data[i * h * w + y * w + x];
    return plane.lo[i] + (q / 255) * (plane.hi[i] - plane.lo[i]);
  }

  // every word at a cell, highest share first: [{i, text, share}]
  ranking(plane, y, x) {
    return this.words.map((wd, i) => ({ i, text: wd.text, share: this.value(plane, i, y, x) }))
      .sort((a, b) => b.share - a.share);
  }

  indexOf(text) {
    const key = norm(text);
    return this.words.findIndex((w) => norm(w.text) === key);
  }
}

export function norm(text) {
  return String(text).normalize("NFKC").toLowerCase().replace(/\s+/g, "");
}

export function percent(share) {
  const p = share * 100;
  if (p === 0) return "0 %";
  const digits = Math.abs(p) >= 10 ? 1 : Math.abs(p) >= 1 ? 2 : 3;
  return `${p.toFixed(digits)} %`;
}

// Bilinear sample of a (h, w) grid at display pixel (px, py) of a (H, W) picture, like
// torch's interpolate(..., align_corners=False).
function sampler(h, w, H, W) {
  const sy = h / H;
  const sx = w / W;
  return (get, px, py) => {
    const fy = Math.min(Math.max((py + 0.5) * sy - 0.5, 0), h - 1);
    const fx = Math.min(Math.max((px + 0.5) * sx - 0.5, 0), w - 1);
    const y0 = Math.floor(fy), x0 = Math.floor(fx);
    const y1 = Math.min(y0 + 1, h - 1), x1 = Math.min(x0 + 1, w - 1);
    const ty = fy - y0, tx = fx - x0;
    const top = get(y0, x0) * (1 - tx) + get(y0, x1) * tx;
    const bot = get(y1, x0) * (1 - tx) + get(y1, x1) * tx;
    return top * (1 - ty) + bot * ty;
  };
}

// Paint the overlay of words `sel` onto `ctx` (already holding the picture, W × H):
// value = max over the words of (share − lo) / (hi − lo) with each word's [lo, hi] from `scale(i)`.
export function paintOverlay(ctx, W, H, view, plane, sel, scale, opacity) {
  if (!sel.length || opacity <= 0) return;
  const [h, w] = view.lat;
  const norm01 = new Float32Array(h * w);
  for (const i of sel) {
    const [lo, hi] = scale(i);
    const span = hi > lo ? hi - lo : 1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = Math.min(Math.max((view.value(plane, i, y, x) - lo) / span, 0), 1);
        if (v > norm01[y * w + x]) norm01[y * w + x] = v;
      }
    }
  }
  const sample = sampler(h, w, H, W);
  const get = (y, x) => norm01[y * w + x];
  const img = ctx.getImageData(0, 0, W, H);
  const px = img.data;
  const lut = view.lut;
  for (let py = 0; py < H; py++) {
    for (let qx = 0; qx < W; qx++) {
      const v = sample(get, qx, py);
      const k = Math.round(Math.min(Math.max(v, 0), 1) * 255) * 3;
      const o = (py * W + qx) * 4;
      px[o] = (1 - opacity) * px[o] + opacity * lut[k];
      px[o + 1] = (1 - opacity) * px[o + 1] + opacity * lut[k + 1];
      px[o + 2] = (1 - opacity) * px[o + 2] + opacity * lut[k + 2];
    }
  }
  ctx.putImageData(img, 0, 0);
}

export function paintColorbar(ctx, W, H, lut) {
  const img = ctx.createImageData(W, H);
  for (let x = 0; x < W; x++) {
    const k = Math.round((x / Math.max(1, W - 1)) * 255) * 3;
    for (let y = 0; y < H; y++) {
      const o = (y * W + x) * 4;
      img.data[o] = lut[k]; img.data[o + 1] = lut[k + 1]; img.data[o + 2] = lut[k + 2]; img.data[o + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}
