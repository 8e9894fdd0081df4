"""The registry and the command against real, pip-installed plugin distributions."""

from __future__ import annotations

import json

import pytest
from distfactory import pip_install, run_python, write_dist

pytestmark = [pytest.mark.e2e, pytest.mark.backend_independent]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One target directory with a good, a broken, two conflicting and an old-API plugin."""
    root = tmp_path_factory.mktemp("projects")
    target = tmp_path_factory.mktemp("site")
    projects = [
        write_dist(root, "lossplug-t-good", "t_good", description="a good test loss"),
        write_dist(
            root, "lossplug-t-broken", "t_broken", module_source="import not_a_real_module_xyz\n"
        ),
        write_dist(root, "lossplug-t-dup-a", "t_dup"),
        write_dist(root, "lossplug-t-dup-b", "t_dup"),
        write_dist(root, "lossplug-t-oldapi", "t_oldapi", api_version=99),
        write_dist(root, "lossplug-t-misnamed", "t_misnamed", module_source=_renamed_source()),
    ]
    pip_install(projects, target)
    return target


def _renamed_source() -> str:
    from distfactory import GOOD_MODULE

    return GOOD_MODULE.format(name="something_else", description="x", api_version=1)


def error_on_use(site, name, error, env=None):
    """Run ``lossplug.use(name)`` in a fresh interpreter; print the ``error`` it raises."""
    code = f"""
        import lossplug
        try:
            lossplug.use({name!r})
        except lossplug.{error} as exc:
            print('ERR', exc)
    """
    return run_python(code, site, env)


def list_json(site, env=None):
    proc = run_python(
        "import sys, lossplug.cli; sys.exit(lossplug.cli.main(['list', '--json']))", site, env
    )
    assert proc.returncode == 0, proc.stderr
    return {(row["name"], row["distribution"]): row for row in json.loads(proc.stdout)}


def test_list_shows_installed_distributions_from_metadata(site):
    rows = list_json(site)
    good = rows[("t_good", "lossplug-t-good")]
    assert good["version"] == "1.2.3"
    assert good["description"] == "a good test loss"
    assert good["status"] == "available"
    assert rows[("t_dup", "lossplug-t-dup-a")]["status"] == "conflict"
    assert "lossplug-t-dup-b" in rows[("t_dup", "lossplug-t-dup-a")]["detail"]


def test_listing_imports_no_backend_and_no_plugin(site):
    proc = run_python(
        """
        import sys, io, contextlib, lossplug.cli
        with contextlib.redirect_stdout(io.StringIO()):
            assert lossplug.cli.main(['list']) == 0
        heavy = sorted(m for m in sys.modules
                       if m.split('.')[0] in {'tensorflow', 'keras', 'jax', 'torch'}
                       or m.startswith('lossplug_t_'))
        print(heavy)
        """,
        site,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_list_load_reports_broken_plugin_and_others_still_work(site):
    proc = run_python(
        "import sys, lossplug.cli; sys.exit(lossplug.cli.main(['list', '--json', '--load']))", site
    )
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["t_broken"]["status"] == "failed"
    assert "not_a_real_module_xyz" in rows["t_broken"]["detail"]
    assert rows["t_good"]["status"] == "loaded"
    assert rows["t_oldapi"]["status"] == "failed"
    assert "API version 99" in rows["t_oldapi"]["detail"]


def test_listing_remembers_a_load_failure_seen_on_use(site, tmp_path):
    env = {"LOSSPLUG_CACHE_DIR": str(tmp_path)}
    assert list_json(site, env)[("t_broken", "lossplug-t-broken")]["status"] == "available"
    error_on_use(site, "t_broken", "PluginLoadError", env)
    row = list_json(site, env)[("t_broken", "lossplug-t-broken")]
    assert row["status"] == "failed"
    assert "failed to load when last used" in row["detail"]
    assert "not_a_real_module_xyz" in row["detail"] and "lossplug list --load" in row["detail"]
    # Still metadata only: the listing imported nothing to know this.
    proc = run_python(
        """
        import sys, io, contextlib, lossplug.cli
        with contextlib.redirect_stdout(io.StringIO()):
            lossplug.cli.main(['list'])
        print(sorted(m for m in sys.modules if m.startswith('lossplug_t_')))
        """,
        site,
        env,
    )
    assert proc.stdout.strip() == "[]"


def test_broken_plugin_error_on_use(site):
    proc = run_python(
        """
        import lossplug
        try:
            lossplug.use('t_broken')
        except lossplug.PluginLoadError as exc:
            print('ERR', exc)
        print('GOOD', lossplug.use('t_good', scale=2.0).config)
        """,
        site,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "ERR loss plugin 't_broken' from distribution lossplug-t-broken 1.2.3 failed to import"
        in proc.stdout
    )
    assert "ModuleNotFoundError" in proc.stdout and "LOSSPLUG_DISABLE=t_broken" in proc.stdout
    assert "GOOD Config(scale=2.0)" in proc.stdout


def test_conflict_names_both_and_qualified_name_picks_one(site):
    proc = run_python(
        """
        import lossplug
        try:
            lossplug.use('t_dup')
        except lossplug.PluginConflictError as exc:
            print('ERR', exc)
        term = lossplug.use('lossplug-t-dup-b:t_dup')
        print('PICKED', term.distribution)
        """,
        site,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lossplug-t-dup-a 1.2.3" in proc.stdout and "lossplug-t-dup-b 1.2.3" in proc.stdout
    assert "'lossplug-t-dup-a:t_dup' or 'lossplug-t-dup-b:t_dup'" in proc.stdout
    assert "PICKED lossplug-t-dup-b" in proc.stdout


def test_disabled_plugin_by_environment(site):
    env = {"LOSSPLUG_DISABLE": "t_good,lossplug-t-dup-a:t_dup"}
    rows = list_json(site, env)
    assert rows[("t_good", "lossplug-t-good")]["status"] == "disabled"
    assert rows[("t_dup", "lossplug-t-dup-b")]["status"] == "available"  # conflict resolved
    proc = error_on_use(site, "t_good", "UnknownPluginError", env)
    assert "is installed (lossplug-t-good) but disabled by LOSSPLUG_DISABLE" in proc.stdout


def test_autoload_off_hides_entry_points(site):
    rows = list_json(site, {"LOSSPLUG_DISABLE_AUTOLOAD": "1"})
    assert rows == {}
    proc = error_on_use(site, "t_good", "UnknownPluginError", {"LOSSPLUG_DISABLE_AUTOLOAD": "1"})
    assert "Entry points are ignored because LOSSPLUG_DISABLE_AUTOLOAD is set" in proc.stdout


def test_api_version_mismatch_names_both_versions(site):
    proc = error_on_use(site, "t_oldapi", "APIVersionError")
    assert "built for lossplug plugin API version 99" in proc.stdout
    assert "implements API version 1" in proc.stdout


def test_in_process_replacement_and_unregister_restore_the_installed_plugin(site):
    proc = run_python(
        """
        import lossplug
        from lossplug.registry import registry
        installed = registry.spec('t_good')            # loads the installed module
        class Other:
            @lossplug.hookimpl
            def lossplug_spec(self):
                import attrs
                return lossplug.PluginSpec(name='t_good', description='replacement',
                                           config=attrs.make_class('C', {}, frozen=True),
                                           tensors=())
            @lossplug.hookimpl
            def build_loss_graph(self, inputs, outputs, extras):
                return None
        try:
            lossplug.register(Other())
        except lossplug.PluginConflictError as exc:
            print('ERR', exc)
        lossplug.register(Other(), replace=True)
        print('NOW', registry.spec('t_good').description)
        lossplug.unregister('t_good')
        print('BACK', registry.spec('t_good').description, lossplug.use('t_good').distribution)
        """,
        site,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "ERR cannot register loss plugin 't_good': the name is already provided by" in proc.stdout
    )
    assert "NOW replacement" in proc.stdout
    assert "BACK a good test loss lossplug-t-good" in proc.stdout


def test_spec_name_must_match_entry_point(site):
    proc = error_on_use(site, "t_misnamed", "InvalidSpecError")
    assert "declares the name 'something_else'" in proc.stdout


def test_unknown_name_suggests_and_lists(site):
    proc = run_python(
        "import sys, lossplug.cli; sys.exit(lossplug.cli.main(['info', 't_goood']))", site
    )
    assert proc.returncode == 2
    assert "Did you mean 't_good'?" in proc.stderr
    assert "Installed plugins:" in proc.stderr and "t_dup" in proc.stderr


def test_info_shows_config_tensors_and_properties(site):
    proc = run_python(
        "import sys, lossplug.cli; sys.exit(lossplug.cli.main(['info', 't_good']))",
        site,
        {"COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "scale" in out and "in [0.0, inf]" in out and "multiplies the loss" in out
    assert "y_true" in out and "inputs" in out and "(B, D)" in out
    assert "loss >= 0" in out


def test_trains_by_name_and_missing_plugin_on_load(site, tmp_path):
    model_path = tmp_path / "m.keras"
    code = f"""
        import numpy as np, keras, lossplug
        inputs = keras.Input((3,))
        model = lossplug.LossModel(inputs, keras.layers.Dense(3)(inputs))
        model.compile('sgd', loss='t_good')
        h = model.fit(np.ones((8, 3)), np.zeros((8, 3)), epochs=1, verbose=0)
        print('TERMS', sorted(h.history))
        model.save({str(model_path)!r})
    """
    proc = run_python(code, site)
    assert proc.returncode == 0, proc.stderr
    assert "TERMS ['loss', 't_good']" in proc.stdout
    load = f"""
        import keras, lossplug
        try:
            keras.models.load_model({str(model_path)!r})
        except Exception as exc:
            print('ERR', type(exc).__name__, exc)
        """
    # Load where the plugin is not installed: which distribution to install.
    proc = run_python(load, tmp_path / "empty-site")
    assert "PluginNotInstalledError" in proc.stdout, proc.stdout + proc.stderr
    assert "not installed here. Install it (pip install lossplug-t-good==1.2.3)" in proc.stdout
    assert "load_model(path, compile=False)" in proc.stdout
    # Load where the plugin is installed but disabled: say so, not "pip install".
    proc = run_python(load, site, {"LOSSPLUG_DISABLE": "t_good"})
    assert "PluginNotInstalledError" in proc.stdout, proc.stdout + proc.stderr
    assert "is installed (lossplug-t-good 1.2.3) but disabled by LOSSPLUG_DISABLE" in proc.stdout
    assert "pip install" not in proc.stdout
