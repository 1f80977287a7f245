// Attention Focus interactive viewer: the DOM shown on the heat-map node after a run.
// Word chips (content words first, function words dimmed; click to overlay one or several), opacity,
// per-word / shared scale, a colour bar in attention share (%), hover ranking, step / layer history when
// the view has it, comparison with another run on one shared scale, download of the raw maps.
// No side effects on import.
import { ROUTE, paintColorbar, paintOverlay, percent } from "./viewdata.js";

const MAX_SIDE = 512;
const MIN_SIDE = 384;

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

export function loadImages(api, view) {
  return Promise.all((view.h.images || []).map((name) => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = api.apiURL(`${ROUTE}${name}`);
  })));
}

export class Viewer {
  // api: ComfyUI's api object; sources(): [{key, label, load: async () => ({view, images})}] to compare with;
  // onStream(name): set the node's text_stream input
  constructor({ api, sources = () => [], onStream = null, onResize = null }) {
    this.api = api;
    this.sources = sources;
    this.onStream = onStream;
    this.onResize = onResize;
    this.root = el("div", { class: "af-viewer" });
    this.view = null;
    this.compare = null;
  }

  // show a view (View) and its pictures (HTMLImageElement per image of the batch); `label` names this run
  // and `compare` ({key, label, view, images}) puts another run beside it (the Compare node's two runs)
  show(view, images, { label = null, compare = undefined } = {}) {
    const first = view.words.findIndex((w) => w.selected);
    this.view = view;
    this.images = images;
    this.label = label;
    this.b = 0;
    this.sel = new Set([first >= 0 ? first : 0].filter((i) => i < view.words.length));
    this.mode = view.h.normalization === "shared" ? "shared" : "per word";
    this.opacity = view.h.opacity ?? 0.6;
    this.frame = null;
    if (compare !== undefined) this.compare = compare;
    if (this.compare && this.compare.key === view.h.id) this.compare = null;
    this.build();
    if (this.compare) {
      const known = [...this.compareSelect.options].some((o) => o.value === this.compare.key);
      if (!known) this.compareSelect.append(el("option", { value: this.compare.key }, this.compare.label));
      this.compareSelect.value = this.compare.key;
    }
    this.render();
  }

  build() {
    const v = this.view;
    this.root.replaceChildren();
    const chips = el("div", { class: "af-chips" });
    v.words.forEach((w, i) => {
      chips.append(el("button", {
        class: `af-chip${w.function ? " af-fn" : ""}`, type: "button", dataset: { i: String(i) },
        title: w.function ? "function word" : "", onclick: () => this.toggle(i),
      }, w.text));
    });
    this.chips = chips;
    const scale = el("select", { class: "af-scale", title: "per word: each word on its own range; shared: one range for all shown words",
      onchange: (e) => { this.mode = e.target.value; this.render(); } },
    el("option", { value: "per word" }, "per-word scale"), el("option", { value: "shared" }, "shared scale"));
    scale.value = this.mode;
    const opacity = el("input", { class: "af-opacity", type: "range", min: "0", max: "1", step: "0.05",
      title: "overlay opacity", oninput: (e) => { this.opacity = Number(e.target.value); this.render(); } });
    opacity.value = String(this.opacity);
    const bar = el("div", { class: "af-bar" }, scale, el("label", {}, "opacity ", opacity), this.batchPicker(),
      this.comparePicker(), el("a", { class: "af-download", download: `attention_maps_${v.h.id.slice(0, 12)}.safetensors`,
        href: this.api.apiURL(`${ROUTE}${v.h.maps_file}`), title: "the raw per-token maps (float16 safetensors, Load Maps reads it)" },
      "raw maps ⤓"));
    this.stage = el("div", { class: "af-stage" });
    this.readout = el("div", { class: "af-readout" }, "hover the picture: words ranked by attention there");
    this.barCanvas = el("canvas", { class: "af-colorbar", width: "256", height: "10" });
    this.barText = el("div", { class: "af-barlabels" });
    this.root.append(bar, chips, this.historyControls(), this.stage,
      el("div", { class: "af-scalebar" }, this.barCanvas, this.barText), this.readout, this.streamButtons());
    paintColorbar(this.barCanvas.getContext("2d"), 256, 10, v.lut);
  }

  // no view to show (its files are gone, or unreadable): a note and the static grid, when there is one
  showMessage(text, gridUrl = null) {
    this.view = null;
    this.root.replaceChildren(el("div", { class: "af-message" }, text),
      gridUrl ? el("img", { class: "af-grid", src: gridUrl, alt: "heat-map grid" }) : null);
    this.onResize?.();
  }

  batchPicker() {
    if (this.view.batch < 2) return null;
    const s = el("select", { class: "af-batch", onchange: (e) => { this.b = Number(e.target.value); this.render(); } });
    for (let b = 0; b < this.view.batch; b++) s.append(el("option", { value: String(b) }, `image ${b + 1}`));
    return s;
  }

  comparePicker() {
    const s = el("select", { class: "af-compare", title: "show another run beside this one, on one shared scale",
      onchange: (e) => this.pickCompare(e.target.value) });
    this.compareSelect = s;
    this.fillCompare(s);
    return s;
  }

  // the list of runs to compare with changed (a run finished somewhere in the graph)
  refreshSources() {
    if (this.compareSelect) this.fillCompare(this.compareSelect);
  }

  fillCompare(s) {
    const cur = this.compare?.key ?? "";
    this._sources = this.sources().filter((x) => x.key !== this.view.h.id);
    s.replaceChildren(el("option", { value: "" }, "compare with…"),
      ...this._sources.map((x) => el("option", { value: x.key }, x.label)));
    s.value = this._sources.some((x) => x.key === cur) ? cur : "";
  }

  async pickCompare(key) {
    if (this.compare?.key === key) return;
    const src = (this._sources || []).find((x) => x.key === key);
    this.compare = src ? { key, label: src.label, ...(await src.load()) } : null;
    this.render();
  }

  historyControls() {
    const fr = this.view.frames;
    const box = el("div", { class: "af-history" });
    if (fr.steps) {
      const label = el("span", { class: "af-steplabel" }, "all steps");
      const r = el("input", { class: "af-steps", type: "range", min: "0", max: String(fr.steps.labels.length), step: "1",
        oninput: (e) => {
          const k = Number(e.target.value);
          this.frame = k ? { kind: "steps", index: k - 1 } : null;
          label.textContent = k ? `step ${fr.steps.labels[k - 1]}` : "all steps";
          if (this.layerSelect) this.layerSelect.value = "";
          this.render();
        } });
      r.value = "0";
      box.append(el("label", {}, "steps ", r, label));
    }
    if (fr.layers) {
      this.layerSelect = el("select", { class: "af-layers", onchange: (e) => {
        const k = e.target.value;
        this.frame = k === "" ? null : { kind: "layers", index: Number(k) };
        this.render();
      } }, el("option", { value: "" }, "all layers"),
      ...fr.layers.labels.map((l, i) => el("option", { value: String(i) }, l)));
      box.append(el("label", {}, "layer ", this.layerSelect));
    }
    if (!fr.steps && !fr.layers) box.hidden = true;
    return box;
  }

  streamButtons() {
    const streams = this.view.h.streams || [];
    if (streams.length < 2 || !this.onStream) return null;
    const box = el("div", { class: "af-streams" }, "text stream (next run): ");
    for (const s of ["all", ...streams]) {
      box.append(el("button", { class: `af-stream${s === this.view.h.text_stream ? " af-on" : ""}`, type: "button",
        onclick: () => { this.onStream(s); for (const b of box.querySelectorAll("button")) b.classList.toggle("af-on", b.textContent === s); } }, s));
    }
    return box;
  }

  toggle(i) {
    if (this.sel.has(i)) this.sel.delete(i);
    else this.sel.add(i);
    this.render();
  }

  // panes: [{label, view, images, b, sel (word indices of that view)}]
  panes() {
    const a = { label: this.compare ? (this.label ?? "this run") : null, view: this.view, images: this.images, b: this.b,
      sel: [...this.sel] };
    if (!this.compare) return [a];
    const cv = this.compare.view;
    const sel = a.sel.map((i) => cv.indexOf(this.view.words[i].text)).filter((j) => j >= 0);
    return [a, { label: this.compare.label, view: cv, images: this.compare.images, b: Math.min(this.b, cv.batch - 1), sel }];
  }

  // [lo, hi] per pane and word: one range per word over both panes (per word) or over everything (shared)
  scales(panes) {
    const ranges = panes.map((p) => {
      const pl = p.view.plane(p.b, p.view === this.view ? this.frame : null);
      return { plane: pl, r: new Map(p.sel.map((i) => [i, [pl.lo[i], pl.hi[i]]])) };
    });
    const text = (p, i) => p.view.words[i].text.toLowerCase();
    const merged = new Map();
    panes.forEach((p, k) => p.sel.forEach((i) => {
      const [lo, hi] = ranges[k].r.get(i);
      const key = this.mode === "shared" ? "*" : text(p, i);
      const cur = merged.get(key) || [Infinity, -Infinity];
      merged.set(key, [Math.min(cur[0], lo), Math.max(cur[1], hi)]);
    }));
    return panes.map((p, k) => ({ plane: ranges[k].plane,
      scale: (i) => merged.get(this.mode === "shared" ? "*" : text(p, i)) || [0, 1] }));
  }

  render() {
    if (!this.view) return;
    for (const c of this.chips.children) c.classList.toggle("af-on", this.sel.has(Number(c.dataset.i)));
    const panes = this.panes();
    const sc = this.scales(panes);
    this.stage.replaceChildren();
    this.stage.classList.toggle("af-two", panes.length > 1);
    panes.forEach((p, k) => {
      const img = p.images[p.b];
      const [H0, W0] = p.view.h.image_size;
      const side = Math.max(H0, W0);
      const f = Math.min(Math.max(side, MIN_SIDE), MAX_SIDE) / side; // sharp on screen, cheap to repaint
      const W = Math.max(1, Math.round(W0 * f)), H = Math.max(1, Math.round(H0 * f));
      const cv = el("canvas", { class: "af-canvas", width: String(W), height: String(H), dataset: { pane: String(k) } });
      const ctx = cv.getContext("2d", { willReadFrequently: true });
      ctx.fillStyle = "#222";
      ctx.fillRect(0, 0, W, H);
      if (img) ctx.drawImage(img, 0, 0, W, H);
      paintOverlay(ctx, W, H, p.view, sc[k].plane, p.sel, sc[k].scale, this.opacity);
      cv.addEventListener("mousemove", (e) => this.hover(e, cv, p, sc[k].plane));
      this.stage.append(el("figure", { class: "af-pane" }, cv, p.label ? el("figcaption", {}, p.label) : null));
    });
    this.renderBar(panes, sc);
    this.onResize?.();
  }

  renderBar(panes, sc) {
    const p = panes[0];
    const unit = p.view.h.softmax === "all" ? "share of all attention" : p.view.h.softmax === "text" ? "share of the prompt's attention" : "attention share";
    let text;
    if (!p.sel.length) text = "click a word to overlay its map";
    else if (this.mode === "shared" || p.sel.length === 1) {
      const [lo, hi] = sc[0].scale(p.sel[0]);
      text = `${percent(lo)} – ${percent(hi)} · ${unit} per token, mean over steps and layers${panes.length > 1 ? " · both runs on this scale" : ""}`;
    } else text = `each word from its own min to max (${unit}; hover for values)`;
    this.barText.textContent = text;
    this.barText.dataset.lo = p.sel.length ? String(sc[0].scale(p.sel[0])[0]) : "";
    this.barText.dataset.hi = p.sel.length ? String(sc[0].scale(p.sel[0])[1]) : "";
  }

  hover(e, cv, p, plane) {
    const r = cv.getBoundingClientRect();
    const [h, w] = p.view.lat;
    const y = Math.min(h - 1, Math.max(0, Math.floor(((e.clientY - r.top) / r.height) * h)));
    const x = Math.min(w - 1, Math.max(0, Math.floor(((e.clientX - r.left) / r.width) * w)));
    const rank = p.view.ranking(plane, y, x);
    this.readout.dataset.top = rank[0]?.text ?? "";
    this.readout.dataset.cell = `${y},${x}`;
    this.readout.replaceChildren(el("span", { class: "af-cell" }, `${p.label ?? ""} cell ${x},${y}: `),
      ...rank.slice(0, 6).map((r, k) => el("span", { class: `af-rank${k === 0 ? " af-top" : ""}` }, `${r.text} ${percent(r.share)}`)));
  }
}
