"""What `inspect` shows of the manifest beside an engine artifact (OpenVINO IR, TensorRT plan, ONNX Runtime
artifact): precision, model card, source hash, build date, versions, and whether the files still match the
hashes the manifest recorded. Rows only: the manifest itself goes into `--json` unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_deploy.atomic import sha256_file

#: manifest key → the file (beside the artifact: same name, this suffix; "" is the artifact) whose hash it records.
#: `sha256` is the one Manifest's (schema 2); the others are the per-target names schema 1 used, still written.
HASH_KEYS = (("sha256", ""), ("xml_sha256", ""), ("plan_sha256", ""), ("bin_sha256", ".bin"))


def hash_checks(artifact: Path, manifest: dict[str, Any]) -> dict[str, bool]:
    """{file name: its sha256 equals every hash the manifest recorded for it}."""
    checks: dict[str, bool] = {}
    digests: dict[Path, str] = {}
    for key, suffix in HASH_KEYS:
        recorded = manifest.get(key)
        target = artifact.with_suffix(suffix) if suffix else artifact
        if isinstance(recorded, str) and recorded and target.is_file():
            digest = digests.setdefault(target, sha256_file(target))
            checks[target.name] = checks.get(target.name, True) and digest == recorded
    return checks


def card_rows(card: dict[str, Any] | None) -> list[tuple[str, str]]:
    from resnet_deploy.card import Preprocessing

    if not isinstance(card, dict):
        return [("model card", "(none: validate and bench will refuse this artifact)")]
    names = [str(n) for n in card.get("class_names") or []]
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    rows = [("model", f"{card.get('arch', '?')}, {card.get('num_classes', '?')} classes: {shown}")]
    try:
        rows.append(("preprocessing", Preprocessing.from_dict(card["preprocessing"]).describe()))
    except (KeyError, TypeError, ValueError):
        rows.append(("preprocessing", "(unreadable in the manifest's card)"))
    if card.get("dataset"):
        rows.append(("dataset", str(card["dataset"])))
    return rows


def mixed_precision_rows(record: Any) -> list[tuple[str, str]]:
    """INT8 layers kept out of INT8 by the budget search, with the agreement before and after."""
    if not isinstance(record, dict) or not record.get("kept_out"):
        return []
    kept = ", ".join(str(item.get("block") or item.get("node")) for item in record["kept_out"])
    before = record.get("full_int8_agreement")
    confirmation = record.get("confirmation")
    after = confirmation.get("agreement") if isinstance(confirmation, dict) else None
    gain = (f" (top-1 agreement {before:.2f} % at full INT8; {after:.2f} % with these kept out, on images the "
            "search did not use)" if isinstance(before, (int, float)) and isinstance(after, (int, float)) else "")
    return [("kept out of INT8", f"{kept} in {record.get('remainder', 'fp32')}{gain}")]


def isa_rows(isa: Any, self_check: Any) -> list[tuple[str, str]]:
    """The CPU class the artifact was verified for, its INT8 weight form, and whether it carries a self-check."""
    if not isinstance(isa, dict):
        return []
    from resnet_deploy.precision.isa import this_cpu

    text = f"verified for {isa.get('class', '?')} ({isa.get('verified_by', 'kernels')}"
    built_on = isa.get("built_on") if isinstance(isa.get("built_on"), dict) else {}
    text += f" on {built_on.get('model') or '?'}, flags {' '.join(isa.get('flags') or []) or 'none'})"
    if isa.get("weight_bits"):
        text += f"; INT8 weights {isa['weight_bits']}-bit for {isa.get('cpu_target')}"
    here = this_cpu().cpu_class
    if isinstance(self_check, dict):
        text += ("; self-check runs when opened on another class" if here == isa.get("class") else
                 f"; this CPU is {here}: its self-check runs when opened here (inspect --verify runs it now)")
    return [("CPU", text)]


def manifest_rows(manifest_file: Path, manifest: dict[str, Any], checks: dict[str, bool]) -> list[tuple[str, str]]:
    """The rows every manifest shares; the kind-specific ones are the caller's."""
    rows = [("manifest", f"{manifest_file.name} ({manifest.get('format', 'unknown format')})")]
    if manifest.get("precision"):
        rows.append(("precision", str(manifest["precision"])))
    rows += mixed_precision_rows(manifest.get("mixed_precision"))
    rows += isa_rows(manifest.get("isa"), manifest.get("self_check"))
    rows += card_rows(manifest.get("card"))
    source = manifest.get("source_onnx") or {}
    if isinstance(source, dict) and source:
        digest = str(source.get("sha256") or "")[:16]
        rows.append(("source ONNX", f"{source.get('path', '?')} (sha256 {digest}…)" if digest else
                     str(source.get("path", "?"))))
    changed = [name for name, ok in checks.items() if not ok]
    if changed:
        rows.append(("file hashes", f"{', '.join(changed)} DIFFERS from the manifest: changed after the build; "
                                    "rebuild it"))
    elif checks:
        rows.append(("file hashes", f"{', '.join(checks)}: matches the manifest"))
    if manifest.get("built_at"):
        rows.append(("built", str(manifest["built_at"])))
    versions = manifest.get("versions")
    if isinstance(versions, dict) and versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)))
    for note in manifest.get("notes") or []:
        rows.append(("note", str(note)))
    return rows
