"""Config sections: the common base, and the sections only the ``nas run`` pipeline reads
(retrain, distill, export; they do not change which candidates a search evaluates)."""

from __future__ import annotations

from typing import Any

import pydantic

from nas.runs.teacher import DEFAULT_TEACHER, parse_teacher


class Section(pydantic.BaseModel):
    """A config section: unknown fields are refused (one line naming the field)."""

    model_config = pydantic.ConfigDict(extra="forbid")


class RetrainConfig(Section):
    """Pipeline stage 2 (``nas run``): retrain the best candidates of the search from scratch.

    Attributes:
        top_k: how many of the best distinct candidates (by reward) are retrained.
        train: TrainConfig fields overriding the search's ``train`` section (e.g. more epochs).
    """

    top_k: int = pydantic.Field(3, ge=1)
    train: dict[str, Any] = {}


class DistillSection(Section):
    """Pipeline stage 3 (``nas run``): distill the winner from a teacher.

    Attributes:
        enabled: run the stage (false: the retrained winner is exported).
        teacher: 'largest' (the space's largest Arch, trained once per run with
            ``teacher_train``), 'best' (the most accurate retrained candidate other than the
            winner), 'top:K' (an ensemble of the K most accurate retrained candidates),
            'arch:PATH' (an Arch file, trained first with ``teacher_train``) or 'ckpt:DIR' (a
            finished 'nas train' work directory); see :mod:`nas.runs.teacher`.
        train: TrainConfig fields overriding the retrain settings for the student.
        teacher_train: TrainConfig fields overriding the retrain settings for a trained
            ('largest' or 'arch:') teacher.
        temperature, kd_weight, hint_weight: see :class:`nas.training.distill.DistillConfig`.
    """

    enabled: bool = True
    teacher: str = DEFAULT_TEACHER
    train: dict[str, Any] = {}
    teacher_train: dict[str, Any] = {}
    temperature: float = pydantic.Field(4.0, gt=0)
    kd_weight: float = pydantic.Field(0.7, ge=0, le=1)
    hint_weight: float = pydantic.Field(0.0, ge=0)

    @pydantic.field_validator("teacher")
    @classmethod
    def _teacher_form(cls, value: str) -> str:
        parse_teacher(value)
        return value


class ExportSection(Section):
    """Pipeline stage 4 (``nas run``): export the winner (see :mod:`nas.export`).

    Attributes:
        formats: any of json, packed, orbax, stablehlo, onnx.
        calibration: training images for ``recalibrate``.
        measure_latency: time the ONNX model with onnxruntime.
        onnx_int8_weights: store weight-only quantized layers' ONNX weights as int8 (smaller
            file, slower onnxruntime inference).
        recalibrate: post-training activation steps for the ONNX model instead of the trained
            ones (off: the exported model is the trained one).
    """

    formats: list[str] = ["json", "packed", "orbax", "stablehlo", "onnx"]
    calibration: int = pydantic.Field(256, ge=0)
    measure_latency: bool = True
    onnx_int8_weights: bool = False
    recalibrate: bool = False


#: Sections only the pipeline reads; they do not change which candidates a search evaluates.
PIPELINE_SECTIONS = ("retrain", "distill", "export")
