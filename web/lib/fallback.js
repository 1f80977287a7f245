// Canvas-drawn widgets for front ends without DOM widgets (LGraphNode.addDOMWidget): the heat-map node's
// static grid with its word list, and one-line notes (Save Maps). They use only litegraph's custom-widget
// contract (draw / computeSize) and are never saved into the workflow. No side effects on import.

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines;
}

// A widget that draws `lines()` of text and, below them, an optional picture scaled to the node width.
export function addDrawnWidget(node, name, { lines, image = () => null }) {
  const w = {
    name, type: "attention_focus_drawn", value: "", serialize: false, options: { serialize: false },
    height: 40,
    draw(ctx, nd, width, y) {
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#ddd";
      ctx.textBaseline = "top";
      let yy = y + 4;
      for (const text of lines()) {
        for (const l of wrap(ctx, text, width - 20)) {
          ctx.fillText(l, 10, yy);
          yy += 15;
        }
      }
      const img = image();
      if (img && img.naturalWidth) {
        const iw = width - 20;
        const ih = (iw * img.naturalHeight) / img.naturalWidth;
        ctx.drawImage(img, 10, yy + 2, iw, ih);
        yy += ih + 4;
      }
      ctx.restore();
      const h = Math.max(24, yy - y + 4);
      if (Math.abs(h - this.height) > 1) {
        this.height = h;
        nd.setSize([nd.size[0], Math.max(nd.size[1], nd.computeSize()[1])]);
      }
    },
    computeSize(width) {
      return [width, this.height];
    },
  };
  const widget = node.addCustomWidget(w) || w;
  widget.serialize = false;
  return widget;
}

// The static grid (temp PNG written by the node) and the prompt's words, drawn on the canvas.
export function showStaticGrid(node, api, record, grid) {
  const state = node.__afGrid || (node.__afGrid = { words: [], img: null });
  state.words = record?.words || [];
  const ref = grid?.[0];
  if (ref) {
    const img = new Image();
    img.onload = () => node.setDirtyCanvas(true, true);
    const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
    img.src = api.apiURL(`/view?${q}`);
    state.img = img;
  }
  if (!state.widget) {
    state.widget = addDrawnWidget(node, "attention_focus_grid", {
      lines: () => [`words: ${state.words.join(", ")}`], image: () => state.img,
    });
  }
  node.setDirtyCanvas(true, true);
  return state.widget;
}
