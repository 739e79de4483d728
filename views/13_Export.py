"""Export: the dataset's images and annotations as files other tools read (CSV/JSONL of labels
and consensus, a Hugging Face imagefolder, a FiftyOne classification dataset, a manifest that
ingest reads back). Images are written as files, never shown here."""

import streamlit as st

from lib import exports, gallery, ui
from lib.files import result_path

ctx = ui.setup("Export", ":material/ios_share:")
st.title("Export")

FORMAT_HELP = {
    "csv": "annotations.csv: one row per image with its label (consensus, else latest), reviewer, and every "
           "annotator's label",
    "jsonl": "annotations.jsonl: the same rows as JSON lines",
    "imagefolder": "Hugging Face imagefolder: <label>/<file> copies and metadata.csv (datasets.load_dataset)",
    "fiftyone": "FiftyOne image classification dataset: data/ and labels.json",
    "manifest": "manifest.csv with absolute paths: python -m lib ingest reads it back without --root",
}

with ui.guard():
    ds = ctx.require_dataset()
    store = ui.annotation_store()
    schemas = {s.name: s for s in store.schemas(ctx.name)}
    c1, c2 = st.columns(2)
    fmt = c1.radio("Format", list(exports.FORMATS), key="ex-fmt", format_func=lambda f: f,
                   captions=[FORMAT_HELP[f] for f in exports.FORMATS])
    with c2:
        set_name = st.selectbox("Label set", list(schemas), key="ex-set", format_func=ui.label_set_name)
        only = st.checkbox("Only images someone labelled", key="ex-only")
        relative = st.checkbox("Paths relative to the dataset root", key="ex-rel",
                               help="Absolute paths by default, so the export can be ingested anywhere.")
        sel = ui.selection(ctx.name)
        use_sel = st.checkbox(f"Only the {gallery.plural(len(sel['ids']), 'image')} selected on {sel['source']}" if sel else
                              "Only a selection (tick images in the Gallery first)", value=bool(sel), key="ex-sel",
                              disabled=not sel)
        default = result_path(ctx.name, f"export-{fmt}-{set_name}")
        out = st.text_input("Folder", value=str(default), key=f"ex-out-{fmt}-{set_name}")
    if st.button("Export", type="primary", key="ex-go"):
        folder = exports.export(ds, store, out, fmt, label_set=set_name, only_reviewed=only,
                                ids=sel["ids"] if use_sel and sel else None, relative=relative)
        st.success(f"Written to `{folder}`")
        st.markdown((folder / "README.md").read_text())
