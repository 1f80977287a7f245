// Attention Focus viewer styles, added to the page once. No side effects on import.
const CSS = `
.af-viewer { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; padding: 4px;
  font: 12px sans-serif; color: var(--input-text, #ddd); overflow: hidden; pointer-events: auto; }
.af-bar, .af-history, .af-streams { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.af-history[hidden] { display: none; }
.af-bar select, .af-history select { background: var(--comfy-input-bg, #222); color: inherit;
  border: 1px solid var(--border-color, #444); border-radius: 4px; font-size: 11px; }
.af-opacity { width: 70px; vertical-align: middle; }
.af-download { color: #8cf; text-decoration: none; margin-left: auto; }
.af-chips { display: flex; flex-wrap: wrap; gap: 3px; }
.af-chip, .af-stream { border: 1px solid #4a6a8a; background: #1d2a38; color: #e8eef5; border-radius: 10px;
  padding: 1px 7px; font-size: 12px; cursor: pointer; line-height: 16px; }
.af-chip.af-fn { opacity: 0.55; font-style: italic; }
.af-chip.af-on, .af-stream.af-on { background: #e8a33d; border-color: #e8a33d; color: #111; opacity: 1; }
.af-stage { display: flex; gap: 4px; }
.af-pane { margin: 0; flex: 1 1 0; min-width: 0; text-align: center; }
.af-pane figcaption { font-size: 11px; opacity: 0.8; }
.af-canvas { width: 100%; height: auto; display: block; cursor: crosshair; image-rendering: auto; }
.af-scalebar { display: flex; flex-direction: column; gap: 2px; }
.af-colorbar { width: 100%; height: 8px; display: block; }
.af-barlabels { font-size: 11px; opacity: 0.85; }
.af-readout { min-height: 30px; font-size: 11px; display: flex; flex-wrap: wrap; gap: 2px 8px; }
.af-rank.af-top { font-weight: bold; color: #e8a33d; }
.af-message { opacity: 0.85; }
.af-grid { width: 100%; height: auto; display: block; }
.af-note { font: 12px sans-serif; color: var(--input-text, #ddd); padding: 4px; overflow-wrap: anywhere; }
.af-note a { color: #8cf; }
`;

export function injectStyle() {
  if (document.getElementById("attention-focus-style")) return;
  const s = document.createElement("style");
  s.id = "attention-focus-style";
  s.textContent = CSS;
  document.head.append(s);
}
