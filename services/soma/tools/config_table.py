"""Print the configuration tables of docs/configuration.md from the Settings model, so the docs cannot
drift from the code (a unit test compares the two)."""

from __future__ import annotations

from pydantic import BaseModel

from soma.config import Settings


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{prefix}{name}.")
            continue
        key = f"{prefix}{name}"
        env = "SOMA_" + key.upper().replace(".", "__")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = field.get_default(call_default_factory=True)
        unset = "(model limit)" if name.endswith("_tokens") else "(unset)"  # None: the model's own, or off
        shown = extra.get("shown_default") or (unset if default is None else str(default))
        rows.append((key, env, shown, field.description or ""))
    return rows


def config_table() -> str:
    lines = ["| key | environment variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{e}` | `{d}` | {m} |" for k, e, d, m in _rows(Settings, "")]
    return "\n".join(lines)


def method_table() -> str:
    """The method's knobs: cpu default, the `paper` budget, and Appendix C.2's range."""
    from soma.algo.config import preset

    cpu, paper = preset("cpu"), preset("paper")
    lines = ["| key | cpu (default) | paper budget | paper range | meaning |", "|---|---|---|---|---|"]

    def walk(model: BaseModel, other: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            value, value_paper = getattr(model, name), getattr(other, name)
            if isinstance(value, BaseModel):
                walk(value, value_paper, f"{prefix}{name}.")
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            rule = extra.get("paper")
            if rule and rule["choices"] is not None:
                shown = "{" + ", ".join(map(str, rule["choices"])) + "}"
            elif rule:
                shown = f"{rule['low']} .. {rule['high']}"
            else:
                shown = ""
            meaning = (field.description or "").replace("|", "\\|")
            fmt = lambda v: ", ".join(v) if isinstance(v, tuple) else str(v)  # noqa: E731
            lines.append(f"| `{prefix}{name}` | `{fmt(value)}` | `{fmt(value_paper)}` | {shown} | {meaning} |")

    walk(cpu, paper, "")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(method_table() if sys.argv[1:] == ["--method"] else config_table())
