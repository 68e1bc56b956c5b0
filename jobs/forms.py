"""The new-job form, generated from ml.HYPERPARAMETERS: a new hyperparameter needs no change here.

The form only parses the browser's strings into Python values and hints the ranges to the browser;
the rules themselves live in ml.TrainConfig (through jobs.services.job_create), in one place.
Architectures and defaults depend on the dataset's kind (images or speech): the form starts from
the kind of the dataset it shows, offers every architecture grouped by kind (job_create refuses
one of the wrong kind, naming those that fit), and `kinds()` is what the page's script needs to
switch both when another dataset is chosen.
"""

import uuid

from django import forms

from webapp.datasets.models import Dataset

LABELS = {"lr": "Learning rate", "arch": "Architecture", "ema": "Weight averaging (EMA decay)",
          "synthetic_voices": "Synthetic voices per class", "mixup": "Mixup (Beta α)"}
KIND_GROUPS = {"image": "For images", "audio": "For speech"}  # the arch select's groups


def _number(x) -> str:
    """For people: 2,147,483,647 and 1e-06, not 2.14748e+09."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _attr(x) -> str:
    """For the browser's min/max: plain numbers."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _field(name: str, param) -> forms.Field:
    common = {"label": LABELS.get(name, name.replace("_", " ").capitalize()), "initial": param.default}
    if param.kind == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in param.choices], help_text=param.help, **common)
    if param.kind == "bool":
        return forms.BooleanField(required=False, help_text=param.help, **common)
    attrs, help_text = {}, param.help
    if param.min is not None and param.max is not None:
        attrs = {"min": _attr(param.min), "max": _attr(param.max)}
        help_text = f"{help_text} Range {_number(param.min)} to {_number(param.max)}."
    if param.kind == "int":
        return forms.IntegerField(help_text=help_text, widget=forms.NumberInput(attrs={**attrs, "step": "1"}), **common)
    # step="any": without it a browser refuses 3e-4 for not being a multiple of 1.
    return forms.FloatField(help_text=help_text, widget=forms.NumberInput(attrs={**attrs, "step": "any"}), **common)


class JobForm(forms.Form):
    dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.none(),
        empty_label=None,
        help_text="Your datasets that are ready (ingested).",
    )

    # A one-time token made when the form is shown: sending the same form twice (a double click, a
    # reload of the POST) finds the job the first send created instead of making another.
    submit_token = forms.CharField(widget=forms.HiddenInput, max_length=64, required=False)

    def __init__(self, *args, user, **kwargs):
        from ml import HYPERPARAMETERS
        from ml.config import config_defaults
        from ml.nets import architectures_for

        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.fields["submit_token"].initial = uuid.uuid4().hex
        datasets = Dataset.objects.filter(owner=user, status=Dataset.Status.READY)
        self.fields["dataset"].queryset = datasets
        self.dataset_kinds = {str(pk): kind for pk, kind in datasets.values_list("pk", "kind")}
        self.kind = self._shown_kind(datasets)
        self.hyperparameters = list(HYPERPARAMETERS)
        defaults = config_defaults(self.kind)
        for name, param in HYPERPARAMETERS.items():
            self.fields[name] = _field(name, param)
            self.fields[name].initial = defaults.get(name, param.default)
            if param.modality:  # the page's script hides it for the other kind; left out, it is the default
                self.fields[name].widget.attrs["data-only-for"] = param.modality
                self.fields[name].required = False
        self.fields["arch"].choices = [
            (KIND_GROUPS.get(kind, kind), [(a, a) for a in architectures_for(kind)]) for kind in Dataset.Kind.values
        ]

    def _shown_kind(self, datasets) -> str:
        """The kind of the dataset the form shows: the posted one, the initial one, or the first
        option (what a browser selects when nothing is)."""
        wanted = self.data.get("dataset") if self.is_bound else self.initial.get("dataset")
        wanted = getattr(wanted, "pk", wanted)
        kind = self.dataset_kinds.get(str(wanted)) if wanted is not None else None
        if kind is None:
            first = datasets.values_list("kind", flat=True).first()
            kind = first or Dataset.Kind.IMAGE
        return kind

    def kinds(self) -> dict:
        """For the page's script: per kind its architectures and default hyperparameters, and the
        kind of each dataset on offer."""
        from ml.config import config_defaults
        from ml.nets import architectures_for

        return {
            "kinds": {kind: {"label": label, "archs": architectures_for(kind), "defaults": config_defaults(kind)}
                      for kind, label in Dataset.Kind.choices},
            "datasets": self.dataset_kinds,
            "shown": self.kind,
        }

    def hyperparameter_fields(self):
        return [self[name] for name in self.hyperparameters]

    def config(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.hyperparameters if self.cleaned_data[name] is not None}
