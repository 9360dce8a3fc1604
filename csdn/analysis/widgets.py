"""The query/gallery inspector widget: a thin ipywidgets layer over :mod:`csdn.analysis.inspector`.

Controls pick the model, optionally a second model to compare side by side, the protocol split, how a
query is chosen (from the worst-ranked queries, by identity or by camera), the query itself and the
top-k; every change re-renders the summary lines and the rank-list figures (PNGs in an ``Output``).
Changing the model keeps the query (in worst-ranked mode it stays first in the list even when the new
model does not rank it among its worst). With ``heatmaps`` (model name -> a function of the query and its
top-k gallery returning their :class:`~csdn.analysis.heatmaps.MatchMaps`, e.g.
:func:`csdn.analysis.heatmaps.maps_of`) a **heatmaps** toggle adds, below the rank lists, the similarity
heatmaps of the shown models, the compared one in the same figure. :meth:`Inspector.mirror` also shows
the current view as a plain image output of the cell, updated on every change, so an exported (static)
notebook shows the last view. All the logic lives in :class:`InspectorData`; this module only wires widgets to it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import ipywidgets as widgets
from IPython.display import Image, display
from matplotlib.figure import Figure

from csdn.analysis.heatmaps import MatchMaps, plot_matches
from csdn.analysis.inspector import InspectorData, InspectorState, QueryView, render
from csdn.data.records import Record

WORST, IDENTITY, CAMERA = "worst", "identity", "camera"  # query selection modes
NO_COMPARISON = "(none)"  # the compare list's entry for a single model
MODES = (("worst-ranked", WORST), ("by identity", IDENTITY), ("by camera", CAMERA))
MapsOf = Callable[[Record, Sequence[Record]], MatchMaps]  # (query, its top-k gallery) -> their heatmaps


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class Inspector(widgets.VBox):
    """Controls on top, the selected query's summary and rank list below; re-rendered on every change.

    ``state`` and ``view`` are what is shown now (None when no query is selectable), ``renders`` counts
    the renders so far.
    """

    def __init__(
        self,
        data: InspectorData,
        image_size: tuple[int, int],
        k: int = 10,
        max_k: int = 30,
        worst: int = 20,
        dpi: int = 100,
        heatmaps: Mapping[str, MapsOf] | None = None,
    ) -> None:
        if not 1 <= k <= max_k:
            raise ValueError(f"need 1 <= k <= max_k, got k={k}, max_k={max_k}")
        self.data, self.image_size, self.worst, self.dpi = data, image_size, worst, dpi
        self.heatmaps = dict(heatmaps or {})
        self.state: InspectorState | None = None
        self.view: QueryView | None = None
        self.renders = 0
        self.compared: QueryView | None = None  # the second model's view of the query (side by side)
        self._filling = False  # True while options are refilled (their change events are ignored)
        self._mirror = None  # display handle of the static copy (see mirror)
        self._png: bytes | None = None  # the current view's figure
        self.model = widgets.Dropdown(options=data.models, description="model", layout=_wide())
        self.compare = widgets.Dropdown(
            options=[NO_COMPARISON, *data.models], value=NO_COMPARISON, description="compare", layout=_wide()
        )
        self.split = widgets.Dropdown(options=data.split_names, description="protocol", layout=_wide())
        self.mode = widgets.ToggleButtons(options=MODES, value=WORST, description="choose")
        self.group = widgets.Dropdown(description="identity", layout=_wide())
        self.query = widgets.Dropdown(description="query", layout=widgets.Layout(width="560px"))
        self.top_k = widgets.IntSlider(value=k, min=1, max=max_k, description="top-k")
        self.show_maps = widgets.Checkbox(value=False, description="heatmaps (where each similarity comes from)")
        self.show_maps.layout.display = None if self.heatmaps else "none"
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.model, self.split, self.mode, self.group):
            control.observe(self._on_selection, names="value")
        for control in (self.query, self.top_k, self.compare, self.show_maps):
            control.observe(self._on_display, names="value")
        controls = widgets.VBox(
            [
                widgets.HBox([self.model, self.compare]),
                self.split,
                self.mode,
                widgets.HBox([self.group, self.query]),
                widgets.HBox([self.top_k, self.show_maps]),
            ]
        )
        super().__init__([controls, self.summary, self.output])
        self._fill_choices()
        self._show()

    # -- events ---------------------------------------------------------------------------------------

    def _on_selection(self, change: dict) -> None:
        if self._filling:
            return
        keep = self.query.value if change.get("owner") is self.model else None  # same split: same query
        self._fill_choices(keep)
        self._show()

    def _on_display(self, _change: dict) -> None:
        if not self._filling:
            self._show()

    # -- choices ------------------------------------------------------------------------------------

    def _fill_choices(self, keep: int | None = None) -> None:
        """Refill the group and query lists for the current model, split and mode (keeping the
        current choices where they are still offered); ``keep`` is a query to keep selected, listed
        first if the worst-ranked list of the new model lacks it."""
        self._filling = True
        try:
            model, split, mode = self.model.value, self.split.value, self.mode.value
            if mode == WORST:
                self.group.layout.display = "none"
                indices = self.data.worst_queries(model, split, self.worst)
                if keep is not None and keep not in indices:
                    indices = [keep, *indices]
            else:
                self.group.layout.display = None
                self.group.description = "identity" if mode == IDENTITY else "camera"
                groups = self.data.query_pids(split) if mode == IDENTITY else self.data.query_cams(split)
                _set_options(self.group, [(str(g), g) for g in groups])
                chosen = self.group.value
                indices = (
                    self.data.queries_of(split, pid=chosen)
                    if mode == IDENTITY
                    else self.data.queries_of(split, cam=chosen)
                )
            _set_options(self.query, [(self.data.query_label(model, split, i), i) for i in indices])  # keeps `keep`
        finally:
            self._filling = False

    # -- rendering ----------------------------------------------------------------------------------

    def _show(self) -> None:
        """Render the selected query (and, when a second model is chosen, its view of the same query)
        into the summary lines and the output."""
        self.output.outputs = ()
        self.compared = None
        if self.query.value is None:
            self.state = self.view = self._png = None
            self.summary.value = "<b>no query to show</b> (every query of this split has no true match?)"
            self.renders += 1
            return
        state = InspectorState(self.model.value, self.split.value, self.query.value, self.top_k.value)
        views = [self.data.view(state)]
        if self.compare.value not in (NO_COMPARISON, self.model.value):
            views.append(self.data.view(replace(state, model=self.compare.value)))
        pngs = [figure_png(render(view, self.image_size), self.dpi) for view in views]
        self.summary.value = "<br>".join(_summary_html(view.summary()) for view in views)
        outputs = [_png_output(png, view.summary()) for png, view in zip(pngs, views)]
        mapped = [(v.state.model, self.heatmaps[v.state.model](v.query, v.gallery)) for v in views if self._maps(v)]
        if mapped:
            outputs.append(_png_output(figure_png(plot_matches(mapped), self.dpi), "similarity heatmaps"))
        self.output.outputs = tuple(outputs)
        self.state, self.view = state, views[0]
        self.compared = views[1] if len(views) > 1 else None
        self._png = pngs[0]
        if self._mirror is not None:
            self._mirror.update(Image(self._png))
        self.renders += 1

    def _maps(self, view: QueryView) -> bool:
        """Whether the heatmaps of ``view`` are shown (toggle on, a heatmap function for its model)."""
        return self.show_maps.value and view.state.model in self.heatmaps

    def mirror(self) -> None:
        """Show the current rank list as a plain image output of the calling cell, updated on every change:
        a notebook saved or exported without a live kernel then still shows the last view."""
        if self._png is not None:
            self._mirror = display(Image(self._png), display_id=True)


def _summary_html(summary: str) -> str:
    """A view's summary as one ``<code>`` element, its lines kept, that breaks between words only (a
    notebook's style for code in an output may break anywhere, even mid-word)."""
    style = "white-space: normal; word-break: normal; overflow-wrap: normal"
    return f'<code style="{style}">' + "<br>".join(html.escape(line) for line in summary.splitlines()) + "</code>"


def _png_output(png: bytes, summary: str) -> dict:
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": f"<rank list: {html.escape(summary)}>",
        },
    }


def _wide() -> widgets.Layout:
    """A fresh layout per widget (a shared one would hide them all with the group list)."""
    return widgets.Layout(width="460px")


def _set_options(dropdown: widgets.Dropdown, options: list[tuple[str, int]]) -> None:
    """Replace a dropdown's options, keeping its value when it is still offered (else the first)."""
    previous = dropdown.value
    dropdown.options = options
    values = [value for _, value in options]
    dropdown.value = previous if previous in values else (values[0] if values else None)


def build_inspector(
    data: InspectorData,
    image_size: tuple[int, int],
    k: int = 10,
    max_k: int = 30,
    worst: int = 20,
    heatmaps: Mapping[str, MapsOf] | None = None,
) -> Inspector:
    """The inspector widget over ``data`` (images decoded at ``image_size = (H, W)``): display it in a
    notebook cell. ``k`` is the initial top-k (slider up to ``max_k``), ``worst`` the length of the
    worst-ranked list; ``heatmaps`` the models whose similarity heatmaps the toggle shows."""
    return Inspector(data, image_size, k=k, max_k=max_k, worst=worst, heatmaps=heatmaps)
