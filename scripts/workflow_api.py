"""Convert a ComfyUI editor workflow (the JSON in example_workflows/) to the API prompt format.

The editor format stores widget values positionally; their names come from the server's
``/object_info`` (the same information the front end uses). Seeds carry an extra
"control after generate" widget value, which is skipped.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: Any) -> bool:
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _input_names(info: dict) -> list[tuple[str, Any]]:
    inputs = info.get("input", {})
    order = info.get("input_order") or {k: list(inputs.get(k, {})) for k in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, inputs.get(section, {}).get(name)))
    return out


def to_api(workflow: dict, object_info: dict) -> dict:
    """API prompt for ``workflow`` (editor format); raises KeyError for unknown node types."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        ctype = node["type"]
        if ctype in ("Note", "MarkdownNote", "Reroute"):
            continue
        info = object_info[ctype]
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        vi = 0
        for name, spec in _input_names(info):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), int(link[2])]
                if _is_widget(spec):  # a widget converted to an input still holds a value slot
                    vi += 1
                continue
            if _is_widget(spec) and vi < len(values):
                inputs[name] = values[vi]
                vi += 1
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    vi += 1
        prompt[str(node["id"])] = {"class_type": ctype, "inputs": inputs}
    return prompt
