"""Screen: train or pick a detector, see its validation curve, screen a dataset with it."""

import pandas as pd
import streamlit as st

from lib import charts, dataset, gallery, ui
from lib import detector as det_mod
from lib.errors import WorkbenchError

ctx = ui.setup("Screen", ":material/shield:")
st.title("Screen a collection")
st.caption("A detector learns *sensitive* from labelled images (dataset labels, a label file, reviews), is saved, "
           "and screens any collection embedded with the same model. The safe view clears an image through it only "
           "when p is below its screening threshold, the image is familiar (close to its training images) and it "
           "is stable under flips and rotations; everything else stays censored.")
ss = st.session_state

with ui.guard():
    ds = ctx.require_dataset()
    names = ui.detector_names()
    if "sc-trained" in ss:  # just trained: show it (set before the widgets exist)
        ss["sc-det"], ss["sc-mode"] = ss.pop("sc-trained"), "Use a saved detector"
    ss.setdefault("sc-mode", "Use a saved detector" if names else "Train a new detector")
    mode = st.radio("Detector", ["Use a saved detector", "Train a new detector"], horizontal=True, key="sc-mode",
                    label_visibility="collapsed")

    if mode == "Train a new detector":
        models = ctx.models()
        with st.form("sc-train"):
            c1, c2 = st.columns(2)
            det_name = c1.text_input("Detector name", value=f"{ctx.name}-{ctx.model.spec if ctx.model else 'color'}"
                                     .replace(":", "-").replace("/", "-")[:60], key="sc-name")
            model_key = c2.selectbox("Model", [m.key for m in models], key="sc-model",
                                     format_func=lambda k: next(m.label for m in models if m.key == k),
                                     help="Models whose cache holds every image of this dataset.")
            sets = st.multiselect("Datasets to learn from", dataset.list_names(), default=[ctx.name], key="sc-sets")
            s1, s2, s3 = st.columns(3)
            use_labels = s1.checkbox("Dataset labels (label policy)", True, key="sc-lab")
            use_reviews = s2.checkbox("Reviews in the annotation store", False, key="sc-rev",
                                      help="Ok counts as safe, Blur as sensitive; Maybe is left out.")
            upload = s3.file_uploader("Label file (CSV: id or path, label)", type=["csv"], key="sc-file")
            v1, v2 = st.columns(2)
            val_frac = v1.slider("Validation share", 0.1, 0.5, det_mod.VAL_FRAC, 0.05, key="sc-val")
            seed = int(v2.number_input("Seed", 0, 10_000, 0, key="sc-seed"))
            go = st.form_submit_button("Train", type="primary", icon=":material/model_training:")
        if go:
            choice = ui.ModelChoice.from_key(model_key)
            labels_file = None
            if upload is not None:
                try:
                    labels_file = pd.read_csv(upload, dtype=str, keep_default_na=False)
                except (ValueError, UnicodeDecodeError) as e:
                    st.error(f"The label file {upload.name} cannot be read as CSV: {e}")
                    st.stop()
            bar = st.progress(0.0, text="Training")
            try:
                det, labels = det_mod.train(
                    sets, choice.spec, det_name, random_weights=choice.random_weights, labels_file=labels_file,
                    from_annotations=use_reviews, dataset_labels=use_labels, val_frac=val_frac, seed=seed,
                    store=ui.annotation_store(), progress=ui.progress_callback(bar, "Training"))
            except WorkbenchError as e:
                bar.empty()
                st.error(str(e))
                st.stop()
            for line in labels.notes():
                st.warning(line)
            ss["sc-trained"] = det_name
            st.rerun()
        st.stop()

    if not names:
        st.info("**No detector yet.** Train one above, or from the command line:\n\n```bash\n"
                f"{ui.CLI} train {ctx.name} --model color --detector {ctx.name}-color\n```")
        st.stop()
    if ss.get("sc-det") not in names:
        ss["sc-det"] = names[0]
    listed = ui.detector_list().set_index("name")
    det_name = st.selectbox("Saved detector", names, key="sc-det",
                            format_func=lambda n: f"{n} · {listed.loc[n, 'model']} · on {listed.loc[n, 'datasets']}")
    det = ui.load_detector(det_name)
    meta = det.meta
    v = meta["validation"]

    st.subheader("Validation")
    m = st.columns(5)
    m[0].metric("AUC", f"{v['auc']:.3f}")
    m[1].metric("AP", f"{v['ap']:.3f}")
    m[2].metric("Double F1 at screening", f"{v['double_f1']:.3f}" if v.get("double_f1") is not None else "–")
    m[3].metric("Screening threshold", f"{det.threshold:.3f}", help=det_mod.screening_text(meta))
    m[4].metric("Unfamiliar beyond", f"{det.cut:.3f}", help="cosine distance to the nearest training image "
                f"({meta['familiarity']['percentile']:g}th percentile of the training leave-one-out distances)")
    note = det_mod.familiarity_text(meta)
    if note:
        st.info(note, icon=":material/visibility_off:")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.detector_pr(det_mod.validation_pr(det)), key="sc-pr")
    with right:
        st.markdown(f"**Model** `{det.spec}`{' [random weights]' if det.random_weights else ''} · "
                    f"**trained** {str(meta.get('created', ''))[:16].replace('T', ' ')}")
        st.dataframe(pd.DataFrame(meta["labels"]["counts"]), hide_index=True, width="stretch")
        st.dataframe(det.thresholds().round(4), hide_index=True, width="stretch")

    st.subheader(f"Screen `{ctx.name}`")
    try:
        det_mod.dataset_embeddings(ctx.name, det)
    except det_mod.DetectorError as e:
        st.warning(str(e))
        st.stop()
    c1, c2 = st.columns([1, 3])
    tta = c2.toggle("Flips and rotations (uncertain)", det.tta_default, key=f"sc-tta-{det_name}",
                    help="Embed the 7 flips / rotations of every image (cached per transform) and mark images whose "
                         "p moves under them. On by default for cheap models (color).")
    if c1.button(f"Screen with {det_name}", type="primary", key="sc-run", icon=":material/shield:"):
        bar = st.progress(0.0, text="Screening")
        det_mod.predict(ctx.name, det, tta=tta, progress=ui.progress_callback(bar, "Flips and rotations"))
        ui.use_predictions(det_mod.prediction_path(ctx.name, det_name))
        st.rerun()

    table = ui.screening_table(ctx.name, det_name)
    if table is None:
        st.caption(f"`{ctx.name}` has not been screened with `{det_name}` yet.")
        st.stop()
    path = str(det_mod.prediction_path(ctx.name, det_name))
    if ctx.preds_path != path:
        st.info(f"The safe view uses **{ctx.preds_path or 'no prediction table'}** (sidebar), not this screening: "
                "the examples below are censored by that choice.")
        st.button("Use this screening in the safe view", on_click=ui.use_predictions, args=(path,), key="sc-use")
    counts = det_mod.screen_counts(table)
    cols = st.columns(len(det_mod.GROUPS))
    for col, g in zip(cols, det_mod.GROUPS, strict=True):
        n = int(counts.loc[counts["group"] == g, "images"].iloc[0])
        col.metric(g, n)
        col.caption(f"{n / max(table['id'].nunique(), 1):.0%} of the distinct images")
    st.dataframe(counts.assign(share=counts["share"].round(4)), hide_index=True)
    for g in det_mod.GROUPS:
        sub = det_mod.screen_examples(table, g, 6)
        st.markdown(f"**{g}** · {gallery.plural(len(sub), 'example')}")
        ui.image_grid(ctx, sub, key=f"sc-{g}", columns=6,
                      caption=lambda r: f"p {r['p']:.2f} · d {r['distance']:.3f} · {ui.short(r['id'], 8)}")
    ui.nav_link("gallery", "Filter them in the Gallery", ctx, icon=":material/grid_view:")
