"""Quality: near-duplicate groups, leaks between splits, likely label mistakes and outliers."""

import streamlit as st

from lib import gallery, quality, ui
from lib import workflow as wf
from lib.errors import WorkbenchError

ctx = ui.setup("Quality", ":material/fact_check:")
st.title("Data quality")
ss = st.session_state

with ui.guard():
    ds = ctx.require_dataset()
    ctx.require_space()
    c = st.columns([3, 2, 2, 2])
    threshold = c[0].slider("Near-duplicate at cosine ≥", 0.80, 1.0, float(quality.DEFAULT_THRESHOLD), 0.005,
                            key="qu-t", help="Pairs of images this similar under the model are near-duplicates "
                            f"(default {quality.DEFAULT_THRESHOLD}). Hand-crafted features such as `color` put "
                            "unrelated images this close: use the perceptual hash with them.")
    use_hash = c[1].toggle("Perceptual hash", True, key="qu-hash", help=(
        f"Model-free pHash of the 8 flips and rotations, within {quality.HASH_MAX_DISTANCE} of 64 bits: finds "
        "flipped, rotated, resized and recompressed copies under any model (computed once per image, cached)."))
    hash_only = c[2].toggle("Hash only", not ctx.model.has_text, key="qu-hash-only", disabled=not use_hash,
                            help="Near-duplicates from the hash alone, not from the model's similarity (on by "
                                 "default for models without a text tower, such as the hand-crafted `color`).")
    k = int(c[3].number_input("Neighbours (k)", 1, 50, quality.KNN_K, key="qu-k",
                              help="For kNN label disagreement and uniqueness."))
    rep = ui.quality_report(ctx, threshold, use_hash, use_hash and hash_only, k)
    dups, leaks = rep.duplicates, quality.leak_rows(ds, rep.leaks)
    m = st.columns(5)
    m[0].metric("Near-duplicate groups", int(dups["group"].nunique()) if len(dups) else 0)
    m[1].metric("Images in groups", len(dups))
    m[2].metric("Leaked pairs across splits", len(rep.leaks))
    m[3].metric("Label issues (cleanlab)", int(rep.label_issues["flagged"].sum()) if len(rep.label_issues) else 0)
    m[4].metric("Outliers", int(rep.outliers["outlier"].sum()))
    for note in rep.notes:
        st.info(note)
    if len(dups) and dups.groupby("group").size().max() > max(10, 0.2 * len(ds.images)):
        st.warning(f"One group holds {int(dups.groupby('group').size().max())} of {gallery.plural(len(ds.images), 'image')}: at cosine "
                   f"≥ {threshold:g}, `{ctx.model.spec}` does not tell near-copies apart. Raise the threshold, or "
                   "use the perceptual hash only.")

    t_groups, t_leaks, t_issues, t_out, t_export = st.tabs(
        ["Near-duplicate groups", "Leaks", "Label issues", "Outliers", "Export"])

    with t_groups:
        if dups.empty:
            st.success("No near-duplicates at these settings.")
        else:
            n_pages = quality.group_page(dups, 1, 8)[1]
            page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="qu-gpage")
            for g, rows in quality.group_page(dups, page, 8, max_members=12)[0]:
                size = int(rows["group_size"].iloc[0])
                st.markdown(f"**Group {g}** · {gallery.plural(size, 'image')} · representative `{rows['path'].iloc[0]}`"
                            + (f" · the first {len(rows)} shown" if size > len(rows) else ""))
                ui.image_grid(ctx, rows, key=f"qu-g{g}", columns=6, caption=quality.group_caption)

    with t_leaks:
        if leaks.empty:
            has_split = "split" in ds.images and ds.images["split"].notna().any()
            st.success("No near-duplicate pairs across splits." if has_split else
                       f"Dataset `{ctx.name}` has no `split` values, so nothing can leak between splits. The "
                       "Export tab builds a split that keeps every group whole.")
        else:
            st.caption(f"{gallery.plural(len(leaks), 'pair')}; a train image near-identical to a test image makes test metrics "
                       "optimistic. `probe --split` leaves such training images out.")
            for i, rec in enumerate(leaks.head(30).itertuples(index=False)):
                left, right = st.columns(2)
                with left:
                    ui.show_image(ctx, int(rec.row_a), key=f"qu-la{i}", caption=f"{rec.split_a} · {rec.path_a}")
                with right:
                    ui.show_image(ctx, int(rec.row_b), key=f"qu-lb{i}",
                                  caption=f"{rec.split_b} · {rec.path_b} · {rec.via}, cos {rec.similarity:.3f}")
                st.divider()

    with t_issues:
        issues = rep.label_issues
        if issues.empty:
            st.info("No label issues to show." if not rep.notes else rep.notes[0])
        else:
            store = ui.annotation_store()
            who = ui.annotator_name()
            labels = list(store.label_set(ctx.name))
            if ss.get("qu-msg"):
                st.success(ss.pop("qu-msg"))
            st.caption("Best first: cleanlab's label quality on out-of-fold probe probabilities, with the share of "
                       "the k nearest images labelled otherwise. **Send to review** queues the image on the "
                       "Annotate page; **Label as …** stores the suggested class as your label."
                       + ("" if who else " Type your annotator name in the sidebar to label."))
            n_show = int(st.number_input("Show", 6, 120, 24, step=6, key="qu-n-issues"))

            def to_review(rec: dict) -> None:
                quality.send_to_review(ctx.name, [rec["id"]], f"label issue: {rec['label']} -> {rec['suggested']}",
                                       str(rec["suggested"]))
                ss["qu-msg"] = f"{ui.short(rec['id'])} sent to the review queue (Annotate → Quality review)."

            def relabel(rec: dict, label: str) -> None:
                try:
                    store.set_label(ctx.name, rec["id"], who, label, task="quality",
                                    context={"queue": "quality", "dataset_label": str(rec["label"]),
                                             "suggested": str(rec["suggested"]), "score": float(rec["score"])})
                except WorkbenchError as e:
                    ss["qu-msg"] = str(e)
                    return
                ss["qu-msg"] = f"{ui.short(rec['id'])} labelled {label} by {who}."

            def actions(rec: dict, key: str) -> None:
                st.button("Send to review", key=f"rv-{key}", on_click=to_review, args=(rec,),
                          icon=":material/playlist_add:")
                lab = quality.annotation_label_for(ctx.name, labels, rec["suggested"])
                if lab is not None:
                    st.button(f"Label as {lab}", key=f"rl-{key}", on_click=relabel, args=(rec, lab),
                              disabled=who is None, icon=":material/edit:")

            ui.image_grid(ctx, issues.head(n_show), key="qu-issues", columns=4, actions=actions,
                          caption=quality.issue_caption)
            with st.expander("The whole ranking"):
                st.dataframe(issues.drop(columns=["row"]).assign(id=issues["id"].str[:12]), hide_index=True,
                             width="stretch", height=300)

    with t_out:
        st.caption(f"Uniqueness: the mean cosine distance to the {k} nearest other images. Outliers lie more than "
                   f"{quality.OUTLIER_MADS:g} scaled MADs above the median: unlike any other image here.")
        out = rep.outliers
        ui.image_grid(ctx, out.head(24), key="qu-out", columns=6, caption=quality.outlier_caption)

    with t_export:
        folder = quality.report_folder(ctx.name, ctx.model.spec)
        st.markdown("**Keep one per group**: every image outside the groups and each group's representative, as a "
                    "manifest `ingest` reads back.")
        if st.button("Write the de-duplicated manifest", key="qu-dedup", icon=":material/filter_1:"):
            path = quality.write_manifest(quality.dedup_manifest(ds, rep.near), folder / "dedup-manifest.csv")
            st.success(f"Written `{path}`. Ingest it with:\n\n```bash\n"
                       f"{wf.ingest_command(path, f'{ctx.name}-dedup', ds.root)}\n```")
        st.markdown("**No-leak split**: every row, with splits that keep each near-duplicate group whole (a group "
                    "moves to the split most of it is in; without splits, a new train/test split by group).")
        if st.button("Write the no-leak manifest", key="qu-noleak", icon=":material/call_split:"):
            path = quality.write_manifest(quality.no_leak_manifest(ds, rep.near), folder / "no-leak-manifest.csv")
            st.success(f"Written `{path}`. Ingest it with:\n\n```bash\n"
                       f"{wf.ingest_command(path, f'{ctx.name}-noleak', ds.root)}\n```")
        st.caption(f"The same report from the command line: `{ui.CLI} quality {ctx.name} --model {ctx.model.spec}"
                   + (" --random-weights" if ctx.model.random_weights else "") + (" --hash" if use_hash else "")
                   + f" --threshold {threshold:g}`")
