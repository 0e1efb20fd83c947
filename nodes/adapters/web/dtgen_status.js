// DTGen nodes show what they did on the canvas. ComfyUI 1.27's editor draws a node's `ui.text`
// only for its own PreviewAny; this gives every DTGen node the same read-only text box, made on the
// node's first run and never saved with the workflow (serialize = false: widget values stay as they are).
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NAME = "dtgen_status";

app.registerExtension({
  name: "DTGen.NodeStatus",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("DTGen")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === NAME);
      if (!widget) {
        widget = ComfyWidgets.STRING(this, NAME, ["STRING", { multiline: true }], app).widget;
        widget.serialize = false;
        if (widget.element) widget.element.readOnly = true;
        if (widget.inputEl) widget.inputEl.readOnly = true;
      }
      widget.value = Array.isArray(text) ? text.join("\n") : String(text);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
