"""Expand: seeds -> their k nearest neighbours -> a review sample per band -> homogeneity -> export."""

import streamlit as st

from lib import dataset as ds_mod
from lib import expansion as ex
from lib import gallery, ui
from lib import workflow as wf
from lib.annotations import CONSENSUS

ctx = ui.setup("Expand", ":material/account_tree:")
st.title("Seed expansion")
st.caption("MedGore: each seed's k nearest neighbours inherit its class. Two annotators then review a sample of "
           "seed-neighbour pairs per band of ranks; a Beta-binomial estimate per band says how far down the "
           "ranking the inherited labels still hold. Resolve disagreements on the Agreement page, then export.")
ss = st.session_state

with ui.guard():
    ds = ctx.require_dataset()
    store = ui.annotation_store()
    annotators = [a for a in store.annotators(ctx.name) if a != CONSENSUS]
    t_run, t_review, t_hom, t_export = st.tabs(["1 · Expand", "2 · Review sample", "3 · Homogeneity", "4 · Export"])

    # ------------------------------------------------------------------ 1: run or pick an expansion
    with t_run:
        src = st.radio("Seeds from", ["Annotations", "Dataset labels"], horizontal=True, key="ex-src",
                       index=0 if annotators or not ds.has_labels else 1)
        c = st.columns(4)
        if src == "Annotations":
            who = c[0].selectbox("Whose labels", [CONSENSUS, *annotators], key="ex-who",
                                 help="consensus: the resolved label, else the label every annotator agrees on.")
            n_max = int(c[1].number_input("At most per class (0: all)", 0, 100000, 0, key="ex-nmax"))
            st.caption(f"Labels become classes: {ex.mapping_text(ex.class_mapping(ctx.name))}.")
            try:
                seeds = wf.seeds_from_annotations(store, ds, who, n_per_class=n_max or None)
                origin = f"annotations:{who}"
                st.dataframe(wf.seed_counts(seeds).set_index("class").T, width="content")
            except wf.WorkflowError as e:
                st.info(f"{e}.")
                seeds = {}
        else:
            ctx.require_labels("drawing seeds from the dataset's labels")
            n_per = int(c[0].number_input("Seeds per label", 1, 100000, 10, key="ex-nper"))
            draw = int(c[1].number_input("Random seed", 0, 10**6, 0, key="ex-draw"))
            seeds = ex.seeds_from_labels(ds, n_per, seed=draw)
            origin = f"labels:{n_per}/seed{draw}"
        n_seeds = sum(len(v) for v in seeds.values()) if isinstance(seeds, dict) else len(seeds)
        k = int(c[2].slider("k (neighbours per seed)", 1, ex.MEDGORE_K, ex.default_k(len(ds.images), n_seeds),
                            key="ex-k", help=f"MedGore uses {ex.MEDGORE_K}; the default reaches about half the "
                                             "dataset from these seeds."))
        rule = c[3].selectbox("Images reached by several classes", ex.RESOLUTION_RULES, key="ex-rule",
                              help="best_rank: the class reaching it at the best rank; majority: from most seeds; "
                                   "drop: leave it unlabelled. Seeds keep their own label.")
        st.caption(f"Model: **{ctx.model.label}** (choose it in the sidebar).")
        if st.button("Run expansion", type="primary", key="ex-run", disabled=not seeds,
                     icon=":material/play_arrow:"):
            space = ctx.require_space()
            saved = ex.run_expansion(space, seeds, k, rule, origin=origin, random_weights=ctx.model.random_weights)
            ss["ex-name"] = saved.name
            st.success(f"Expansion `{saved.name}` saved in `{saved.path}`.")

        exps = ex.list_expansions(ctx.name)
        if exps.empty:
            st.info("No expansion yet: choose seeds and run one.")
            st.stop()
        names = exps["name"].tolist()
        if ss.get("ex-name") not in names:
            ss["ex-name"] = names[0]
        name = st.selectbox("Expansion", names, key="ex-name", help="Saved under results/<dataset>/expansion-<name>/")
        saved = ui.load_expansion(ctx.name, name)
        res = saved.result
        meta = saved.meta
        st.caption(f"model `{meta.get('spec', '?')}` · k={res.k} · rule {res.rule} · seeds from "
                   f"{meta.get('origin', '?')} · {meta.get('created', '')}")
        m = st.columns(4)
        m[0].metric("Seeds", len(res.seeds))
        m[1].metric("Labelled images", int(res.labelled["label"].notna().sum()))
        m[2].metric("Conflicts", len(res.conflicts), help="Images reached by seeds of more than one class")
        m[3].metric("Unresolved", int(res.labelled["label"].isna().sum()))
        st.dataframe(res.counts, hide_index=True, width="stretch")
        st.plotly_chart(ex.score_by_rank_figure(res.hits), width="stretch")
        with st.expander(f"Conflicts ({len(res.conflicts)}): images reached from several classes"):
            if len(res.conflicts):
                st.dataframe(res.conflicts.assign(id=res.conflicts["id"].str[:12]), hide_index=True,
                             width="stretch", height=220)
                part = res.conflicts.head(12)
                part = part.assign(row=gallery.rows_of_ids(ds.images, part["id"]))
                ui.image_grid(ctx, part, key="ex-conf", columns=6,
                              caption=lambda r: f"{r['classes']} → {r['label'] if isinstance(r['label'], str) else '?'}")
            else:
                st.caption("No image is reached from more than one class.")

    # ------------------------------------------------------------------ 2: review sample per band
    with t_review:
        c = st.columns(5)
        band = int(c[0].number_input("Band width (ranks)", 1, 99, 20, key="rv-band"))
        how = c[1].radio("Draw", ["per rank", "per band"], key="rv-how", horizontal=True)
        n = int(c[2].number_input("Pairs", 1, 10000, 10, key="rv-n",
                                  help="Pairs drawn at every rank (or in every band), per stratum"))
        strat_opts = ["(none)", "seed_label", *[col for col in gallery.filter_options(ds.images)
                                                if col not in ("label", "split")]]
        strat = c[3].selectbox("Stratify by", strat_opts, key="rv-strat",
                               help="seed_label: the seed's class; a dataset column: the neighbour's value")
        draw = int(c[4].number_input("Random seed", 0, 10**6, 0, key="rv-seed"))
        if st.button("Build review sample", type="primary", key="rv-build", icon=":material/casino:"):
            per_rank, per_band = (n, None) if how == "per rank" else (None, n)
            stratify = None if strat == "(none)" else strat
            sample = ex.review_sample(saved, ds, band_width=band, per_rank=per_rank, per_band=per_band,
                                      stratify=stratify, seed=draw)
            file_name = wf.sample_file_name(band, per_rank, per_band, stratify, draw)
            wf.save_review_sample(saved, sample, file_name)
            ss["rv-file"] = file_name
        files = [p.name for p in wf.list_review_samples(saved)]
        if not files:
            st.info("No review sample for this expansion yet: build one.")
        else:
            if ss.get("rv-file") not in files:
                ss["rv-file"] = files[0]
            file_name = st.selectbox("Review sample", files, key="rv-file")
            sample = wf.load_review_sample(saved.path / file_name)
            st.markdown(f"**{gallery.plural(len(sample), 'pair')}** over **{gallery.plural(sample['id'].nunique(), 'image')}**: each image is labelled "
                        "once per annotator, blind to its seed.")
            st.dataframe(wf.review_summary(sample, store, ctx.name, annotators), hide_index=True, width="stretch")

            def send() -> None:
                ui.send_review(ctx.name, saved.name, file_name)

            if st.button("Send to Annotate queue", key="rv-send", on_click=send, icon=":material/send:"):
                st.switch_page(ui.PAGES["annotate"])

    # ------------------------------------------------------------------ 3: homogeneity per band
    with t_hom:
        c = st.columns(3)
        truth_who = c[0].selectbox("Review labels of", [CONSENSUS, *annotators], key="hm-who",
                                   help="consensus: resolved labels, else the label all annotators agree on")
        files = [p.name for p in wf.list_review_samples(saved)]
        scopes = [*(f"sample: {f}" for f in files), "every pair of the expansion"]
        scope = c[1].selectbox("Pairs counted", scopes, key="hm-scope")
        band_h = int(c[2].number_input("Band width", 1, 99, 20, key="hm-band"))
        pairs = wf.load_review_sample(saved.path / scope.removeprefix("sample: ")) if scope.startswith("sample") \
            else None
        truths = {"review": ex.review_truth(store, ctx.name, truth_who)}
        if ds.has_labels:
            truths["dataset labels"] = ex.dataset_truth(ds)
        table = ex.homogeneity_comparison(saved, truths, band_h, pairs)
        judged = table[(table["truth"] == "review") & (table["scope"] == "all")]
        if int(judged["confirmed"].sum() + judged["rejected"].sum()) == 0:
            st.info("No reviewed pair yet: label the review sample on the Annotate page (Blur / Ok; Maybe counts as "
                    "unjudged)." + (" The dataset labels' curve is shown for comparison." if ds.has_labels else ""))
        st.plotly_chart(ex.homogeneity_figure(table), width="stretch", key="hm-chart")
        st.caption("Share of seed-neighbour pairs whose neighbour keeps the seed's class: Beta(confirmed + 1, "
                   "rejected + 1) mean ± 1 sd per band.")
        st.dataframe(table[["truth", "scope", "band_label", "pairs", "confirmed", "rejected", "unjudged", "mean",
                            "sd"]].round({"mean": 3, "sd": 3}), hide_index=True, width="stretch", height=260)

    # ------------------------------------------------------------------ 4: export
    with t_export:
        c = st.columns(4)
        subset = c[0].radio("Images", ["all", "first n ranks", "last n ranks"], key="xp-subset")
        n_ranks = int(c[0].number_input("n", 1, 99, 3, key="xp-n", disabled=subset == "all"))
        first_n = n_ranks if subset == "first n ranks" else None
        last_n = n_ranks if subset == "last n ranks" else None
        seeds_in = c[1].checkbox("Include the seeds", True, key="xp-seeds")
        rev_opts = [CONSENSUS, *annotators, "(ignore reviews)"]
        rev_who = c[1].selectbox("Reviews from", rev_opts, key="xp-who",
                                 help="A review label that maps to a class replaces the inherited one.")
        unresolved = c[1].radio("Reviewed but undecided (Maybe, disagreement)", ["drop", "keep"], key="xp-unres",
                                horizontal=True)
        val = c[2].number_input("Validation share", 0.0, 0.9, 0.1, step=0.05, key="xp-val")
        test = c[2].number_input("Test share", 0.0, 0.9, 0.0, step=0.05, key="xp-test")
        split_seed = int(c[2].number_input("Split seed", 0, 10**6, 0, key="xp-seed"))
        keep_cols = c[3].multiselect("Also keep columns", [col for col in ds.images.columns if col not in (
            "id", "path", "label", "split", "width", "height", "format", "duplicate_of")], key="xp-keep")
        absolute = c[3].checkbox("Absolute paths", False, key="xp-abs")
        reviews = None if rev_who == "(ignore reviews)" else ex.review_labels(store, ctx.name, rev_who)
        manifest = wf.export_table(ds, saved, reviews=reviews, first_n=first_n, last_n=last_n,
                                   include_seeds=seeds_in, unresolved=unresolved, val_frac=float(val),
                                   test_frac=float(test), seed=split_seed, keep_columns=keep_cols, absolute=absolute)
        st.markdown(f"**{gallery.plural(len(manifest), 'image')}** in the export.")
        if len(manifest):
            st.dataframe(wf.export_summary(manifest), hide_index=True, width="stretch")
        default_out = str(wf.default_export_path(saved, first_n, last_n))
        out = st.text_input("Manifest file (.csv or .parquet)", default_out, key=f"xp-out-{name}-{subset}-{n_ranks}")
        new_name = st.text_input("Dataset name to ingest it as", f"{ctx.name}-expanded", key="xp-name")
        b1, b2, b3 = st.columns(3)
        if b1.button("Write manifest", type="primary", key="xp-write", disabled=not len(manifest),
                     icon=":material/save:"):
            path = wf.write_manifest(manifest, out)
            ss["xp-written"] = str(path)
        b2.download_button("Download CSV", manifest.to_csv(index=False).encode(), file_name="manifest.csv",
                           mime="text/csv", key="xp-download", disabled=not len(manifest))
        written = ss.get("xp-written")
        if written:
            st.success(f"Manifest written to `{written}`. Ingest it back with:")
            st.code(wf.ingest_command(written, new_name, ds.root), language="bash")
            if b3.button("Ingest it now", key="xp-ingest", icon=":material/input:"):
                target = ds_mod.check_name(new_name.strip())
                if target == ctx.name:
                    st.error("Ingest the export under a new name: it would replace the dataset it comes from.")
                else:
                    st.success(ds_mod.ingest(written, target, root=ds.root).summary())
