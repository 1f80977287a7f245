// Attention Focus front-end extension.
// - Heatmap node: after a run, an interactive viewer (web/lib/viewer.js) on the node; where the front end
//   has no DOM widgets, or the view cannot be read, the static grid and the word list drawn on the canvas.
// - Save Maps: shows on the node which file it wrote (with a download link) and refreshes Load Maps lists.
// - Load Maps: a "refresh list" button.
// Nothing of this is saved into workflows: every widget added here has serialize = false.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addDrawnWidget, showStaticGrid } from "./lib/fallback.js";
import { injectStyle } from "./lib/style.js";
import { fetchView } from "./lib/viewdata.js";
import { Viewer, loadImages } from "./lib/viewer.js";

const NODE_TYPES = new Set([
  "AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap",
  "AttentionFocusSaveMaps", "AttentionFocusLoadMaps", "AttentionFocusReweight", "AttentionFocusCompare",
  "AttentionFocusHistory", "AttentionFocusSegment", "AttentionFocusDifference", "AttentionFocusInfluence",
]);
const VIEWER_NODES = new Set(["AttentionFocusHeatmap", "AttentionFocusCompare"]);
const COLOR = "#2a3b4d";
const BGCOLOR = "#1f2c3a";
const VIEWER_WIDTH = 440;

// views shown in this browser session, newest last: what a viewer can compare with
const recent = [];
const loaded = new Map(); // view id -> Promise<{view, images}>

function loadView(id) {
  if (!loaded.has(id)) {
    loaded.set(id, fetchView(api, id).then(async (view) => ({ view, images: await loadImages(api, view) })));
    if (loaded.size > 16) loaded.delete(loaded.keys().next().value);
  }
  return loaded.get(id);
}

function graphNodes() {
  const g = app.graph;
  return (g?.nodes ?? g?._nodes ?? []);
}

function remember(node, id) {
  const runs = recent.filter((r) => r.nodeId === node.id).length;
  const title = node.title || "Heatmap";
  recent.push({ id, nodeId: node.id, label: `${title} #${node.id}, run ${runs + 1}` });
  if (recent.length > 12) recent.shift();
  for (const n of graphNodes()) n.__afViewer?.viewer.refreshSources();
}

// other views to compare with: newest first, the other heat-map nodes' current runs on top
function compareSources() {
  const live = new Set(graphNodes().map((n) => n.__afViewId).filter(Boolean));
  return [...recent].reverse().sort((a, b) => live.has(b.id) - live.has(a.id))
    .map((r) => ({ key: r.id, label: r.label, load: () => loadView(r.id) }));
}

function fit(node, minWidth = VIEWER_WIDTH) {
  const w = Math.max(node.size[0], minWidth);
  const h = Math.max(node.computeSize([w, node.size[1]])[1], 80);
  if (w !== node.size[0] || h > node.size[1]) node.setSize([w, Math.max(h, node.size[1])]);
  node.setDirtyCanvas(true, true);
}

function contentHeight(root) {
  let h = 12;
  for (const c of root.children) if (!c.hidden) h += c.offsetHeight + 4;
  return h;
}

function ensureViewer(node) {
  if (node.__afViewer) return node.__afViewer;
  const viewer = new Viewer({
    api, sources: compareSources,
    onStream: (name) => {
      const w = node.widgets?.find((x) => x.name === "text_stream");
      if (w) { w.value = name; w.callback?.(name); node.setDirtyCanvas(true, true); }
    },
    onResize: () => requestAnimationFrame(() => fit(node)),
  });
  const widget = node.addDOMWidget("attention_focus_viewer", "attention-focus-viewer", viewer.root, {
    serialize: false, hideOnZoom: false,
    getMinHeight: () => Math.max(120, contentHeight(viewer.root)),
  });
  widget.serialize = false; // the workflow keeps only the node's real inputs (see issue 11)
  viewer.root.dataset.node = String(node.id);
  node.__afViewer = { viewer, widget };
  return node.__afViewer;
}

async function showHeatmap(node, message) {
  const [record, other] = message?.attention_focus_view ?? [];
  const labels = message?.attention_focus_labels ?? [];
  const grid = message?.attention_focus_grid;
  if (!record) return;
  node.__afViewId = record.id;
  remember(node, record.id);
  if (typeof node.addDOMWidget !== "function") {
    showStaticGrid(node, api, record, grid); // a front end without DOM widgets: today's static grid
    fit(node, 320);
    return;
  }
  const { viewer } = ensureViewer(node);
  try {
    const { view, images } = await loadView(record.id);
    // the Compare node sends both runs: show them side by side at once
    const compare = other ? { key: other.id, label: labels[1] ?? "B", ...(await loadView(other.id)) } : undefined;
    if (node.__afViewId !== record.id) return; // a newer run arrived meanwhile
    viewer.show(view, images, { label: labels[0] ?? null, compare });
    fit(node);
  } catch (err) {
    console.warn("[attention_focus] this run's view cannot be read, showing the static grid:", err);
    const ref = grid?.[0];
    const q = ref && new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
    viewer.showMessage("This run's maps are no longer on the server (ComfyUI clears its temp folder when it starts, "
      + "and keeps the newest runs only): run the workflow again for the viewer.", q ? api.apiURL(`/view?${q}`) : null);
    fit(node);
  }
}

async function refreshLoadMaps() {
  try {
    const res = await api.fetchApi("/object_info/AttentionFocusLoadMaps", { cache: "no-store" });
    const files = (await res.json())?.AttentionFocusLoadMaps?.input?.required?.file?.[0];
    if (!Array.isArray(files)) return;
    for (const n of graphNodes()) {
      if (n.type !== "AttentionFocusLoadMaps") continue;
      const w = n.widgets?.find((x) => x.name === "file");
      if (w) w.options.values = files;
      n.setDirtyCanvas(true, true);
    }
  } catch (err) {
    console.warn("[attention_focus] could not refresh the maps list:", err);
  }
}

function showSaved(node, message) {
  const rec = message?.attention_maps?.[0];
  if (!rec) return;
  const path = rec.subfolder ? `${rec.subfolder}/${rec.filename}` : rec.filename;
  const size = rec.bytes ? ` · ${(rec.bytes / 1024).toFixed(1)} KB` : "";
  const shape = rec.shape ? ` · ${rec.shape.join("×")} (images × tokens × h × w)` : "";
  const text = `wrote ${path}${shape}${size}`;
  const q = new URLSearchParams({ filename: rec.filename, subfolder: rec.subfolder || "", type: rec.type || "output" });
  if (typeof node.addDOMWidget === "function") {
    if (!node.__afNote) {
      const div = document.createElement("div");
      div.className = "af-note";
      const widget = node.addDOMWidget("attention_focus_saved", "attention-focus-note", div, {
        serialize: false, hideOnZoom: false, getMinHeight: () => Math.max(36, div.scrollHeight),
      });
      widget.serialize = false;
      node.__afNote = div;
    }
    const a = document.createElement("a");
    a.href = api.apiURL(`/view?${q}`);
    a.download = rec.filename;
    a.textContent = "download";
    const span = document.createElement("span");
    span.className = "af-saved";
    span.textContent = `${text} `;
    node.__afNote.replaceChildren(span, a);
  } else {
    node.__afNoteText = text;
    if (!node.__afNoteWidget) node.__afNoteWidget = addDrawnWidget(node, "attention_focus_saved", { lines: () => [node.__afNoteText] });
  }
  fit(node, 320);
  refreshLoadMaps();
}

// Workflows saved by versions before 0.3 hold the old "prompt words" widget's value after the Heatmap node's six
// widgets of that time; the front end's widget-value migration then shifted it into text_stream, and since the
// node gained mask_mode it would land there. Drop it (and any surplus) before the values are assigned.
const LEGACY_VALUES = { AttentionFocusHeatmap: { length: 7, keep: 6, check: (v) => !["soft", "threshold", "otsu"].includes(v) } };

function dropSurplusValues(nodeType, name) {
  const configure = nodeType.prototype.configure;
  const legacy = LEGACY_VALUES[name];
  nodeType.prototype.configure = function (info) {
    const n = (this.widgets || []).filter((w) => w.serialize !== false).length;
    const values = info?.widgets_values;
    if (Array.isArray(values) && legacy && values.length === legacy.length && legacy.check(values[legacy.keep])) {
      info = { ...info, widgets_values: values.slice(0, legacy.keep) };
    } else if (n && Array.isArray(values) && values.length > n) {
      info = { ...info, widgets_values: values.slice(0, n) };
    }
    return configure.call(this, info);
  };
}

app.registerExtension({
  name: "attention_focus.ui",
  async setup() {
    injectStyle();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = COLOR;
      this.bgcolor = BGCOLOR;
      if (nodeData.name === "AttentionFocusLoadMaps") {
        const b = this.addWidget("button", "refresh list", null, () => refreshLoadMaps(), { serialize: false });
        if (b) b.serialize = false;
      }
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    if (VIEWER_NODES.has(nodeData.name)) {
      if (nodeData.name === "AttentionFocusHeatmap") dropSurplusValues(nodeType, nodeData.name);
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        showHeatmap(this, message);
      };
    } else if (nodeData.name === "AttentionFocusSaveMaps") {
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        showSaved(this, message);
      };
    }
  },
});
