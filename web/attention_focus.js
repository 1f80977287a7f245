// Attention Focus front-end extension: shows, on the heat-map node, the prompt words it can map
// (sent by the node after it runs) and keeps the node's preview of the heat-map grid.
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set([
  "AttentionFocusTextEncode", "AttentionFocusCapture", "AttentionFocusHeatmap",
  "AttentionFocusSaveMaps", "AttentionFocusLoadMaps", "AttentionFocusReweight",
]);
const COLOR = "#2a3b4d";
const BGCOLOR = "#1f2c3a";

app.registerExtension({
  name: "attention_focus.ui",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = COLOR;
      this.bgcolor = BGCOLOR;
      return r;
    };
    if (nodeData.name !== "AttentionFocusHeatmap") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const words = message?.attention_focus_words;
      if (!Array.isArray(words)) return;
      let widget = this.widgets?.find((w) => w.name === "prompt words");
      if (!widget) {
        widget = this.addWidget("text", "prompt words", "", () => {}, { serialize: false });
        widget.disabled = true;
      }
      widget.value = words.join(", ");
      this.setDirtyCanvas(true, true);
    };
  },
});
