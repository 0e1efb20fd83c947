// DTGen nodes show what they did on the canvas. ComfyUI 1.27's editor draws a node's `ui.text`
// only for its own PreviewAny; this gives every DTGen node the same read-only text box, made on the
// node's first run, never saved with the workflow and never sent with a queued prompt (it would
// change the node's cache key after every run).
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
        widget.serialize = false;                                   // not in the saved workflow
        widget.options = { ...(widget.options ?? {}), serialize: false }; // nor in the queued prompt
        if (widget.element) widget.element.readOnly = true;
        if (widget.inputEl) widget.inputEl.readOnly = true;
      }
      widget.value = Array.isArray(text) ? text.join("\n") : String(text);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
