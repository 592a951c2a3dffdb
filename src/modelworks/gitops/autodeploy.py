"""Deploy step of an apply: each planned model's registered version into the auto-deploy
environments, committed to the deploy repo and recorded as Deployments.

Every planned model is checked, not only the ones trained now (a killed apply may have
registered versions it never deployed; a file may have been edited), through the stat cache
of gitops/configcache.py: a config unchanged since it last matched costs one os.stat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks import _git
from modelworks._deployrepo import layout_of, publish
from modelworks.gitops import deploy as gdeploy
from modelworks.registry import audit
from modelworks.registry.models import Deployment, Model, ModelVersion
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.plan import Plan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def deploy_auto(
    ws: Workspace, store: Store, p: Plan, actor: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Put each model's current registered version into the auto-deploy environments.

    Every planned model is checked, not only the ones trained now (a killed apply may have
    registered versions it never deployed), through a stat cache of the work tree's configs:
    files unchanged since they last matched cost one os.stat, not a YAML parse.
    """
    import modelworks
    from modelworks.gitops.configcache import ConfigCache, key_digest, read_config
    from modelworks.registry.tenants import oci_namespace

    envs = [e for e, cfg in ws.settings.environments.items() if cfg.auto_deploy]
    # Two tenants' models may share a fingerprint (same inputs): key by model and fingerprint.
    fps = {(m.name, m.fingerprint): m for m in p.models if m.fingerprint and m.action != "error"}
    if not envs or not fps:
        return [], None
    mv = ModelVersion
    with store.session() as s:
        found = s.execute(
            select(
                Model.tenant,
                Model.name,
                Model.id,
                mv.version,
                mv.fingerprint,
                mv.artifact_digest,
                mv.oci_layout,
                mv.lineage,
            )
            .join(mv)
            .where(mv.status == "registered", mv.fingerprint.in_([fp for _, fp in fps]))
        ).all()
    rows = [
        (fps[(qualified(t, n), fp)], mid, version, fp, digest or "", layout or "")
        for t, n, mid, version, fp, digest, layout, lineage in found
        if (qualified(t, n), fp) in fps
        and not (lineage or {}).get("dirty")  # trained with --allow-dirty: never deployed
    ]
    namespaces: dict[str, str] = {}
    cache = ConfigCache(
        ws.state_dir / "cache" / "deploy-configs.json",
        ws.deploy_repo,
        salt=f"{modelworks.__version__}\0{ws.settings.oci.registry or ''}",
    )
    deployed, paths = [], []
    repo_layout = layout_of(ws.deploy_repo)
    for env in envs:
        configs, checked = [], []
        for mp, model_id, version, fp, digest, layout in rows:
            spec = mp.spec
            if env not in spec.deploy.environments or not spec.deploy.auto_deploy:
                continue
            if spec.tenant not in namespaces:
                namespaces[spec.tenant] = oci_namespace(ws, spec.tenant)
            namespace = namespaces[spec.tenant]
            rel = gdeploy.config_path(env, spec.name, spec.tenant, repo_layout)
            parts = [spec.name, spec.tenant, spec.runtime, version, fp, digest, layout, namespace]
            digest_key = key_digest(parts)
            if cache.fresh(rel, digest_key):
                continue
            cfg = gdeploy.deploy_config(
                ws,
                spec.name,
                spec.tenant,
                spec.runtime,
                version,
                fp,
                digest,
                layout,
                namespace=namespace,
            )
            old = read_config(ws.deploy_repo, env, mp.name)
            if old != cfg:
                configs.append((model_id, cfg, old.version if old else None))
            checked.append((rel, digest_key))
        paths += gdeploy.write_configs(ws.deploy_repo, env, [c for _, c, _ in configs])
        for rel, digest_key in checked:
            cache.note(rel, digest_key)
        deployed += [
            {
                "name": c.qualified,
                "env": env,
                "version": c.version,
                "previous": prev,
                "model_id": mid,
                "tenant": c.tenant,
            }
            for mid, c, prev in configs
        ]
    cache.save()
    if not paths:
        return [], None
    lines = "\n".join(f"- {d['env']}: {d['name']} {d['version']}" for d in deployed[:200])
    commit = _git.commit(
        ws.deploy_repo,
        paths,
        f"deploy: {len(deployed)} model version(s)\n\n{lines}\n",
        author=actor,
    )
    publish(ws.deploy_repo)
    with store.session() as s:
        for d in deployed:
            s.add(
                Deployment(
                    model_id=d.pop("model_id"),
                    env=d["env"],
                    version=d["version"],
                    commit=commit,
                    kind="deploy",
                    actor=actor,
                )
            )
    audit.record(
        store,
        [
            audit.event(
                "deployment",
                str(d["name"]),
                actor=actor,
                tenant=str(d["tenant"]),
                before={"env": d["env"], "version": d["previous"]},
                after={"env": d["env"], "version": d["version"], "commit": commit},
            )
            for d in deployed
        ],
    )
    return deployed, commit
