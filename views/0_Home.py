"""Home: datasets, their ingest problems, which models embedded them; ingest and embed forms."""

import streamlit as st

from lib import catalog, charts, gallery, sensitivity, ui
from lib import dataset as ds_mod
from lib.catalog import ModelChoice
from lib.models import aliases

ui.ensure_demo()
ctx = ui.setup("Home", ":material/home:")

st.title("Sensitive image workbench")
st.caption("Find the images a lay viewer must not see without a warning, grow labelled sets through nearest "
           "neighbours, and compare image models — with **safe view on by default**: an image reaches the "
           "browser unblurred only with positive evidence that it is safe (a safe label, an Ok review, a confident "
           "detector clearance, a known-safe dataset); every other image is censored, with its reason.")

with ui.guard():
    summary = ui.datasets_summary()
    if len(summary):
        st.subheader("Datasets")
        st.dataframe(summary, hide_index=True, width="stretch")
    if ctx.name is not None and len(ctx.ds) == 0 and len(ctx.ds.errors):  # show why before stopping
        st.dataframe(ctx.ds.errors, hide_index=True, width="stretch")
    ds = ctx.require_dataset()

    st.subheader(f"Dataset `{ctx.name}`")
    info = ds.info
    c = st.columns(5)
    c[0].metric("Images", len(ds))
    c[1].metric("Unique images", len(ds.unique_ids))
    c[2].metric("Labels", ds.images["label"].nunique())
    c[3].metric("Ingest errors", len(ds.errors))
    c[4].metric("Duplicates", len(ds.duplicates))
    st.caption(f"{info.get('kind', '')} `{info.get('source', '')}` · root `{ds.root}` · "
               f"metadata columns: {', '.join(info.get('metadata_columns', [])) or 'none'}")

    left, right = st.columns(2)
    with left:
        if ds.has_labels:
            st.plotly_chart(charts.count_bars(ds.images["label"], "label"), width="stretch")
        else:
            st.info(f"Dataset `{ctx.name}` has no labels: class folders or a `label` manifest column add them "
                    f"(`{ui.CLI} ingest /path/to/manifest.csv --name {ctx.name}`).")
    with right:
        facets = [c for c in gallery.filter_options(ds.images) if c != "label"]
        meta = [c for c in facets if c in info.get("metadata_columns", [])]  # e.g. source before format
        col = "split" if "split" in facets else (meta or facets or [None])[0]
        if col is not None:
            st.plotly_chart(charts.count_bars(ds.images[col], col), width="stretch")
        if "split" not in facets:
            st.caption("No `split` column: splits are optional (train/val/test in a manifest).")

    with st.expander(f"Ingest errors ({len(ds.errors)})", expanded=bool(len(ds.errors))):
        if len(ds.errors):
            st.dataframe(ds.errors, hide_index=True, width="stretch")
        else:
            st.caption("Every file could be read.")
    with st.expander(f"Byte-identical duplicates ({len(ds.duplicates)})"):
        if len(ds.duplicates):
            st.dataframe(ds.duplicates.assign(id=ds.duplicates["id"].str[:16]), hide_index=True, width="stretch")
        else:
            st.caption("No duplicate files.")

    st.subheader("Safe view", help="An image is shown unblurred only with positive evidence that it is safe; "
                 "everything else is censored with its reason.")
    decision = ctx.decision()
    counts = sensitivity.breakdown(decision)
    n_raw = int((~decision["censored"]).sum())
    sv1, sv2 = st.columns([2, 3])
    with sv1:
        st.markdown(f"**{len(decision) - n_raw}** censored · **{n_raw}** shown raw, by evidence:")
        st.dataframe(counts, hide_index=True, width="stretch")
        ui.nav_link("gallery", "Work through them in the Gallery", ctx, icon=":material/grid_view:")
    with sv2:
        policy, policy_error = ctx.policy()
        st.markdown("**Label policy**: which labels mean sensitive or safe (unknown labels are censored). "
                    "The `(none)` row is the images without a label.")
        table = sensitivity.label_table(ds.images, policy)
        edited = st.data_editor(
            table, hide_index=True, width="stretch", disabled=["label", "images", "source"], key="home-policy",
            column_config={"class": st.column_config.SelectboxColumn(
                "class", options=list(sensitivity.CLASSES), required=True,
                help="sensitive: censored, and the positive class of every metric; safe: may be shown raw; "
                     "unknown: censored (not yet screened)")})
        who_default = st.session_state.get("wb:annotator", "")
        p1, p2 = st.columns([2, 1])
        who = p1.text_input("Your name (recorded with each change)", value=who_default, key="home-policy-who",
                            max_chars=64)
        changes = sensitivity.table_edits(table, edited)
        if p2.button("Save policy", type="primary", disabled=not any(changes.values()) or not who.strip(),
                     key="home-policy-save"):
            sensitivity.set_policy(ctx.name, by=who.strip(), **changes)
            st.rerun()
        ks = policy.known_safe
        if ks:
            st.caption(f"Known-safe: marked by {ks['by']} on {str(ks['at'])[:10]}.")
            if st.button("Remove the known-safe mark", key="home-unsafe", disabled=not who.strip()):
                sensitivity.set_policy(ctx.name, known_safe=False, by=who.strip())
                st.rerun()
        elif st.button("Mark the whole dataset known-safe", key="home-known-safe", disabled=not who.strip(),
                       help="For a collection you know holds nothing disturbing (an X-ray archive, say): every "
                            "image nothing flags is shown raw. Recorded with your name and the time."):
            sensitivity.set_policy(ctx.name, known_safe=True, by=who.strip())
            st.rerun()
        checked = ui.nudity_table(ctx.name)
        n_checked = 0 if checked is None else len(checked)
        n_unique = len(ds.unique_ids)
        label = f"Check {gallery.plural(n_unique - n_checked, 'image')} for nudity (NudeNet, offline)"
        if n_checked < n_unique and st.button(label, key="home-nudenet",
                                              help="NudeNet flags exposed intimate parts; it never clears an image."):
            from lib import nudity

            bar = st.progress(0.0, text="NudeNet…")
            nudity.check_dataset(ds, progress=ui.progress_callback(bar, "NudeNet"))
            bar.empty()
            st.rerun()
        elif n_checked >= n_unique:
            flagged = int((checked["nudity"] >= sensitivity.NUDITY_THRESHOLD).sum())
            st.caption(f"NudeNet checked every image: {flagged} flagged.")

    st.subheader("Models")
    status = ctx.status()
    if len(status):
        st.dataframe(
            status, hide_index=True, width="stretch",
            column_config={
                "vectors": st.column_config.ProgressColumn("vectors", min_value=0, max_value=max(len(ds.unique_ids), 1),
                                                           format="%d"),
                "current": st.column_config.CheckboxColumn("current", help="the spec still resolves to this cache"),
            })
    else:
        st.info(f"No embeddings yet. Embed with the offline `color` model below, or run "
                f"`{ui.CLI} embed {ctx.name} --model color`.")

    st.subheader("Add data")
    ing, emb = st.columns(2)
    with ing, st.form("ingest"):
        st.markdown("**Ingest a folder or a manifest** (CSV/parquet with a `path` column)")
        source = st.text_input("Folder or manifest path", placeholder="/path/to/images or /path/to/manifest.csv",
                               key="home-source")
        new_name = st.text_input("Dataset name", placeholder="mine", key="home-new-name")
        all_sensitive = st.checkbox("Every image is sensitive unless its label says safe",
                                    help="For a folder of wounds without labels: they are flagged, not merely "
                                         "unscreened (both are censored; flagged images count as positives).")
        go = st.form_submit_button("Ingest", type="primary")
    if go:
        with ing:
            bar = st.progress(0.0, text="Ingesting…")
            report = ds_mod.ingest(source.strip(), new_name.strip(),
                                   progress_callback=ui.progress_callback(bar, "Ingesting"))
            bar.empty()
            if all_sensitive:
                sensitivity.set_policy(report.name, all_sensitive=True, by="ingest")
            st.session_state["home-ingested"] = report.summary()
            ui.set_page_param("dataset", report.name)
            st.session_state["wb:dataset"] = report.name
            st.rerun()  # the new dataset in the table above, and selected
    if st.session_state.get("home-ingested"):
        with ing:
            st.success(st.session_state.pop("home-ingested"))

    with emb, st.form("embed"):
        st.markdown(f"**Embed `{ctx.name}`** with a model (only missing images are computed)")
        known = sorted(set(status["spec"])) if len(status) else []
        spec = st.selectbox("Model spec", list(dict.fromkeys(["color", *known, *aliases(), catalog.TEST_SPEC])),
                            accept_new_options=True,
                            help="`color` (offline), an alias such as `clip-b32` or `biomedclip`, or any spec: "
                                 "`open_clip:ARCH@TAG`, `open_clip:hf-hub:ORG/NAME`, `hf:ID_OR_PATH`.")
        rnd = st.checkbox("Use random weights (testing only)", key="embed-random")
        go_embed = st.form_submit_button("Embed", type="primary")
    if go_embed:
        with emb:
            choice = ModelChoice(spec, bool(rnd) and spec != "color")
            backend = ui.load_backend(choice)  # loads it under a spinner, before the progress bar
            bar = st.progress(0.0, text="Embedding…")
            from lib.signals import index

            # One decode per image: the model's vectors, and the EB fractions, hashes and
            # statistics the Blur scores and Quality pages read, in the same pass.
            report = index(ctx.name, [choice.spec], random_weights=choice.random_weights,
                           backends={choice.spec: backend},
                           progress_callback=ui.progress_callback(bar, "Embedding"))
            bar.empty()
            st.success(report.embed[0].summary())
            st.caption(report.summary())
            st.button("Refresh")
