"""Paged DMS attention kernels (Triton) with pure-torch references and device dispatch."""

if __name__ == "kernels":  # imported by the bare folder name: HF's `kernels` gets the name
    from ._bare_name import hand_over  # noqa: TID251 - this folder under its bare name

    hand_over(__file__)
else:
    from agentrt.kernels._validate import KEEP_FOREVER
    from agentrt.kernels.copy_kv_slots import copy_kv_slots
    from agentrt.kernels.dispatch import backend_for
    from agentrt.kernels.dms_prefill_attention import dms_prefill_attention
    from agentrt.kernels.paged_decode_attention import (
        choose_num_splits,
        num_sms,
        paged_decode_attention,
    )
    from agentrt.kernels.write_kv_slots import write_kv_slots

__all__ = [
    "KEEP_FOREVER",
    "backend_for",
    "choose_num_splits",
    "copy_kv_slots",
    "dms_prefill_attention",
    "num_sms",
    "paged_decode_attention",
    "write_kv_slots",
]
