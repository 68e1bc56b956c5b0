"""The upload form. It parses the browser's strings; the rules (ranges, archive size and format)
are the service's dataset_validate, so the page and the API share one set of rules."""

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.forms.utils import ErrorDict
from django.template.defaultfilters import filesizeformat

from webapp.datasets.models import Dataset
from webapp.datasets.services import (
    CLIP_SECONDS_RANGE,
    IMAGE_SIZE_RANGE,
    KIND_CHOICES,
    OPTION_DEFAULTS,
    SEED_MAX,
    VAL_FRACTION_RANGE,
    dataset_validate,
)

ARCHIVE_ACCEPT = ".zip,.tar,.tar.gz,.tgz,application/zip,application/x-tar,application/gzip"


class DatasetUploadForm(forms.Form):
    name = forms.CharField(
        max_length=Dataset._meta.get_field("name").max_length,
        help_text="Shown in lists, e.g. “Cats vs dogs, May”.",
    )
    archive = forms.FileField(
        widget=forms.ClearableFileInput(attrs={"accept": ARCHIVE_ACCEPT}),
        help_text="",  # set in __init__: it names the current size limit
    )
    kind = forms.ChoiceField(
        label="Kind",
        choices=KIND_CHOICES,
        initial=OPTION_DEFAULTS["kind"],
        required=False,  # left out: detect automatically
        help_text="What the archive holds: images or recordings of speech (WAV, FLAC, OGG, Opus, MP3 or AIFF). "
        "Automatic detection goes by which of the two the archive has more of.",
    )
    image_size = forms.IntegerField(
        label="Image size",
        initial=OPTION_DEFAULTS["image_size"],
        widget=forms.NumberInput(attrs={"min": IMAGE_SIZE_RANGE[0], "max": IMAGE_SIZE_RANGE[1], "step": 1}),
        help_text=f"Images only: side in pixels ({IMAGE_SIZE_RANGE[0]}–{IMAGE_SIZE_RANGE[1]}) that images of mixed "
        "sizes are squashed to. When all images already share one size (up to 512), it is kept.",
    )
    clip_seconds = forms.FloatField(
        label="Clip length (s)",
        initial=OPTION_DEFAULTS["clip_seconds"],
        required=False,  # left out: the default
        widget=forms.NumberInput(attrs={"min": CLIP_SECONDS_RANGE[0], "max": CLIP_SECONDS_RANGE[1], "step": "any"}),
        help_text=f"Speech only ({CLIP_SECONDS_RANGE[0]:g}–{CLIP_SECONDS_RANGE[1]:g} s): every recording is padded "
        "with silence or trimmed to its loudest stretch of this length. One second fits single words.",
    )
    val_fraction = forms.FloatField(
        label="Validation fraction",
        initial=OPTION_DEFAULTS["val_fraction"],
        widget=forms.NumberInput(attrs={"min": VAL_FRACTION_RANGE[0], "max": VAL_FRACTION_RANGE[1], "step": "any"}),
        help_text=f"Share of each class held out to measure accuracy ({VAL_FRACTION_RANGE[0]:g}–"
        f"{VAL_FRACTION_RANGE[1]:g}); every class with two or more images keeps at least one.",
    )
    seed = forms.IntegerField(
        initial=OPTION_DEFAULTS["seed"],
        widget=forms.NumberInput(attrs={"min": 0, "max": SEED_MAX, "step": 1}),
        help_text="The same seed gives the same train/validation split.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = settings.MAX_UPLOAD_BYTES
        self.fields["archive"].widget.attrs["data-max-bytes"] = limit
        self.fields["archive"].help_text = (
            "A .zip, .tar or .tar.gz with one folder per class, e.g. <code>cat/1.jpg</code>, "
            "<code>dog/2.png</code> (JPEG, PNG, BMP, WebP or GIF), or <code>yes/1.wav</code>, <code>no/2.flac</code> "
            "(WAV, FLAC, OGG, Opus, MP3 or AIFF; any sample rate). The Google Speech Commands layout works as it is. "
            f"Up to {filesizeformat(limit)}."
        )

    def clean(self):
        # The service's checks run here too, so that every mistake shows up at the first attempt
        # (the file input is emptied by each round trip). Fields Django already refused keep
        # their own message.
        cleaned = super().clean()
        options = {key: cleaned[key] for key in OPTION_DEFAULTS if key in cleaned}
        try:
            dataset_validate(name=cleaned.get("name", ""), archive=cleaned.get("archive"), options=options)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                if field not in self.errors:
                    self.add_error(field if field in self.fields else None, messages)
        return cleaned

    @classmethod
    def refused(cls, message: str) -> "DatasetUploadForm":
        """A blank form showing `message` next to the archive field: the upload was refused before
        its body was read, so there is nothing to bind (and nothing to validate)."""
        form = cls()
        form._errors = ErrorDict({"archive": form.error_class([message], renderer=form.renderer)})
        return form

    def options(self) -> dict:
        return {key: self.cleaned_data[key] for key in OPTION_DEFAULTS}
