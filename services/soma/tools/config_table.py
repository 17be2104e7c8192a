"""Print the configuration table of the README from the Settings model, so the docs cannot
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
        default = field.get_default(call_default_factory=True)
        shown = "(model limit)" if default is None else str(default)
        rows.append((key, env, shown, field.description or ""))
    return rows


def config_table() -> str:
    lines = ["| key | environment variable | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{e}` | `{d}` | {m} |" for k, e, d, m in _rows(Settings, "")]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())
