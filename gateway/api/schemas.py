"""Pydantic models for every HTTP request and response, so the OpenAPI document is complete and true."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from gateway import validation
from gateway.cam import DEFAULT_METHOD
from gateway.render import DEFAULT_COLORMAP
from gateway.validation import NAME_PATTERN, AsciiInt


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_image, not_found")
    message: str = Field(description="what went wrong and what to do about it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Strict(BaseModel):
    """No silent ignore: an unknown field is a 422, not a typo that quietly does nothing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Instance(Strict):
    b64: str = Field(description="base64 of an encoded image (JPEG, PNG, WebP, BMP, TIFF, GIF)")


class PredictBatchRequest(Strict):
    """Strict JSON: `"top_k": true`, `"top_k": "3"` and `"version": 1.0` are refused (422), not coerced."""

    instances: list[Instance] = Field(min_length=1, description="images to classify, answered in order")
    top_k: StrictInt | None = Field(None, description="classes per image (default 5)", json_schema_extra={"minimum": 1})
    version: StrictInt | None = Field(None, description="pin a model version", json_schema_extra={"minimum": 1})
    label: str | None = Field(None, description="pin a version label", json_schema_extra={"pattern": NAME_PATTERN})


# Query parameters, as models so that an unknown one is refused (422) and the same fields can also come as multipart
# form fields (`curl -F method=gradcam++`). Values are checked by gateway/validation.py (the validators below raise
# its 422s before the body is read; the core checks again whatever reaches it, from either door), with one wording;
# `minimum`/`pattern` here only document the rules.
class TargetParams(Strict):
    version: AsciiInt | None = Field(None, description="pin a model version", json_schema_extra={"minimum": 1})
    label: str | None = Field(None, description="pin a version label", json_schema_extra={"pattern": NAME_PATTERN})
    model: str | None = Field(None, description="model name (default: the gateway's)",
                              json_schema_extra={"pattern": NAME_PATTERN})

    @model_validator(mode="after")
    def _target(self):
        validation.check_pin(self.model, self.version, self.label, None)
        return self


class SceneParams(TargetParams):
    gsd_m: float | None = Field(None, description="metres per pixel of an input without a geotransform (PNG, JPEG, "
                                "plain TIFF); a GeoTIFF's own resolution is read from its file. Default: the model's "
                                "(EuroSAT: 10). A tile model resamples the input to its own GSD and tiles it",
                                json_schema_extra={"exclusiveMinimum": 0})


class ClassMapParams(SceneParams):
    overlay: bool = Field(False, description="PNG: draw the class map over the image instead of alone")
    alpha: float = Field(0.45, description="PNG overlay opacity", json_schema_extra={"minimum": 0, "maximum": 1})
    max_side: AsciiInt | None = Field(None, description="longest side of the PNG (capped by the gateway)",
                                      json_schema_extra={"minimum": 16})

    @model_validator(mode="after")
    def _options(self):
        validation.check_alpha(self.alpha)
        validation.check_max_side(self.max_side)
        return self


class PredictParams(SceneParams):
    top_k: AsciiInt = Field(5, description="classes per image", json_schema_extra={"minimum": 1})


class GradCamParams(SceneParams):
    class_: str | None = Field(None, alias="class", description="class to explain: a label, or an index in ASCII "
                               "digits (default: the top class)", json_schema_extra={"maxLength": 128})
    rank: AsciiInt | None = Field(None, description="explain the rank-th most probable class (1 = top)",
                                  json_schema_extra={"minimum": 1})
    method: str = Field(DEFAULT_METHOD, description="CAM method (see /v1/methods); `gradcampp` is `gradcam++` "
                        "without URL encoding", json_schema_extra={"maxLength": 32})
    alpha: float = Field(0.45, description="heat-map opacity", json_schema_extra={"minimum": 0, "maximum": 1})
    colormap: str = Field(DEFAULT_COLORMAP, description="OpenCV colormap name", json_schema_extra={"maxLength": 32})
    max_side: AsciiInt | None = Field(None, description="longest side of the PNG (capped by the gateway)",
                                      json_schema_extra={"minimum": 16})
    seamless: bool = Field(False, description="scenes: blend windows every half tile so the heat map has no dim grid "
                           "at tile borders; about 4x the CAM work, and admission prices it so")

    @model_validator(mode="after")
    def _options(self):
        if self.class_ is not None:
            validation.parse_class(self.class_)
        if self.rank is not None:
            validation.check_int("rank", self.rank, 1)
        validation.validate_method(self.method)
        validation.validate_colormap(self.colormap)
        validation.check_alpha(self.alpha)
        validation.check_max_side(self.max_side)
        return self


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class CompositionEntry(BaseModel):
    label: str
    index: int
    fraction: float = Field(description="share of the scene's ground whose cell is this class")


class SceneInfo(BaseModel):
    """How a tile model covered a scene: the input resampled to the model's GSD and cut into a grid of cells."""

    rows: int
    cols: int
    cell_size_px: list[float] = Field(description="one cell's [height, width] in input pixels")
    gsd_m: float | None = Field(description="the input's metres per pixel (a GeoTIFF's own, `gsd_m`, or the model's)")
    composition: list[CompositionEntry] = Field(description="classes by share of the ground, largest first")


class ClassMapJSON(BaseModel):
    model: str
    version: int
    class_names: list[str]
    colors: list[str] = Field(description="the palette of the PNG map, '#rrggbb' per class index")
    rows: int
    cols: int
    cell_size_px: list[float] = Field(description="one cell's [height, width] in input pixels")
    gsd_m: float | None = Field(description="the input's metres per pixel")
    classes: list[list[int]] = Field(description="rows x cols class indices, row-major from the top-left cell")
    confidence: list[list[float]] = Field(description="rows x cols probability of each cell's class")
    composition: list[CompositionEntry]
    request_id: str


class PredictResponse(BaseModel):
    model: str
    version: int = Field(description="the version that actually served the request")
    predictions: list[Prediction] | list[list[Prediction]] = Field(
        description="sorted by probability; for a JSON batch, one list per instance. For a scene (an input larger "
        "than one tile of a tile model) they rank the scene's class distribution: the cells' probabilities averaged "
        "by ground area")
    request_id: str
    scene: SceneInfo | list[SceneInfo | None] | None = Field(
        None, description="the grid and composition of a scene; for a JSON batch one entry per instance (null for "
        "a single tile); absent when no input is a scene")


class GradCamJSON(BaseModel):
    model: str
    version: int
    label: str = Field(description="the class explained")
    index: int
    probability: float
    method: str
    heatmap: list[list[float]] = Field(description="the raw map, h x w floats in [0, 1], at the CAM layer's size")
    png_base64: str = Field(description="the PNG overlay, base64")
    request_id: str
    scene: SceneInfo | None = Field(None, description="for a scene: its grid and composition; `heatmap` then covers "
                                    "the whole scene, one CAM-layer value per 8 model pixels, on one scale")


class VersionInfo(BaseModel):
    version: int
    state: str = Field(description="TF Serving state: AVAILABLE, LOADING, UNLOADING, END, UNKNOWN")
    labels: list[str]
    class_names: list[str]
    input_size: list[int]
    metrics: dict = Field(default_factory=dict, description="test-split metrics recorded at export")
    input_kind: str = Field("image", description="`tile`: reads ground at `gsd_m`, larger inputs are resampled and "
                            "tiled; `image`: the whole image is resized to `input_size`")
    gsd_m: float | None = Field(None, description="a tile model's ground sample distance, metres per pixel")
    card: dict = Field(default_factory=dict, description="the version's STAC model card (Machine Learning Model "
                       "extension: mlm:input bands/shape/scaling, gsd, mlm:output classes)")
    signatures: list[str] = Field(default_factory=list, description="the SavedModel signatures the loaded version "
                                  "serves (from the backend; empty while it is not loaded)")
    methods: list[str] = Field(default_factory=list, description="the CAM methods it can answer; any other is 404")


class ModelInfo(BaseModel):
    name: str
    default: bool
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    detail: str = ""
