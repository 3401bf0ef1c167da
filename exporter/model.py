"""A small Keras ResNet for overhead imagery: a stem (stride 2, or 1 for full resolution), residual stages, global
pooling, logits.

The output of the last stage is the Grad-CAM layer (`GRADCAM_LAYER`); the stage before it is exported too, as the
higher-resolution layer that multi-layer CAM methods fuse (`HIRES_LAYER`).
"""

from __future__ import annotations

import math

import keras
from keras import layers

from exporter.config import TrainConfig

GRADCAM_LAYER = "gradcam_features"
HIRES_LAYER = "hires_features"


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def residual_block(x, filters: int, stride: int, project: bool, name: str, out_name: str | None = None):
    """Two 3x3 conv-BN(-ReLU) layers plus a shortcut (a 1x1 projection when shape changes), then ReLU."""
    shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False) if project else x
    y = _conv_bn(x, filters, 3, stride, f"{name}_a")
    y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=out_name or f"{name}_out")(y)


def build_resnet(
    num_classes: int,
    input_size: int = 64,
    widths: tuple[int, ...] = (32, 64, 128),
    blocks_per_stage: int = 2,
    dropout: float = 0.2,
    stem_stride: int = 2,
) -> keras.Model:
    """uint8-range RGB in, logits out. Scaling to [-1, 1] lives inside the model so a .keras file stands alone.
    `stem_stride=1` keeps the first stage at full resolution: 4x the work, and a Grad-CAM grid twice as fine."""
    inputs = keras.Input((input_size, input_size, 3), name="images")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = _conv_bn(x, widths[0], 3, stem_stride, "stem")
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            last = b == blocks_per_stage - 1
            out_name = None
            if last and s == len(widths) - 1:
                out_name = GRADCAM_LAYER
            elif last and s == len(widths) - 2:
                out_name = HIRES_LAYER
            x = residual_block(
                x,
                width,
                stride=2 if (b == 0 and s > 0) else 1,
                project=b == 0,
                name=f"stage{s + 1}_block{b + 1}",
                out_name=out_name,
            )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="resnet")


def build_from_config(cfg: TrainConfig, num_classes: int) -> keras.Model:
    """The network a run's config describes: the one place that maps its architecture fields onto `build_resnet`."""
    return build_resnet(num_classes, cfg.input_size, cfg.widths, cfg.blocks_per_stage, cfg.dropout, cfg.stem_stride)


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one forward pass of one input: every layer with a kernel (convolutions, dense) applies it once
    per output position. The gateway weighs a version's tiles by it (admission), so it must count what runs."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        elif getattr(layer, "kernel", None) is not None:
            total += math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:-1])
    return total


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.schedules.CosineDecay:
    """Linear warm-up from 1% to the peak, then cosine decay to 1% of it, over `cfg.epochs`."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.schedule_warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate * 0.01 if warmup else cfg.learning_rate,
        decay_steps=total - warmup,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )


def build_optimizer(cfg: TrainConfig, steps_per_epoch: int, learning_rate: float | None = None
                    ) -> keras.optimizers.Optimizer:
    """AdamW on `learning_rate_schedule`, with no weight decay on BN and biases: the one recipe of both trainers. A
    fixed `learning_rate` makes it a variable the caller sets every step (the accelerated trainer, whose schedule
    length is known only after its first epoch)."""
    schedule = learning_rate_schedule(cfg, steps_per_epoch) if learning_rate is None else learning_rate
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    # matched against a variable's own name ("gamma", not its path "stem_bn/gamma")
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt
