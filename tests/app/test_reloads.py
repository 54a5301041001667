"""Links and reloads: the Setup choices live in the URL, runs survive a new session and a new server."""

from __future__ import annotations

from nufilt.appstate import appurl
from tests.app.helpers import APP, assert_clean, forget_session_resources, settle


def new_session(query: dict[str, str] | None = None, page: str | None = None):
    """A new browser session (a reload): a new AppTest, optionally with query parameters."""
    from streamlit.testing.v1 import AppTest

    forget_session_resources()
    at = AppTest.from_file(str(APP), default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    return at.switch_page(page).run() if page else at


def url(at) -> dict[str, list[str]]:
    """The session's query parameters, every value as a list."""
    return {name: list(value) if isinstance(value, list) else [value] for name, value in at.query_params.items()}


def step_line(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Step "))


def test_the_url_holds_the_choices_and_a_link_reproduces_them(app):
    app.multiselect(key="setup.methods").set_value(["nufilt", "task_arithmetic"]).run()
    app.radio(key="setup.order_mode").set_value("random").run()
    app.number_input(key="setup.seed").set_value(3).run()
    key = next(k for k in app.session_state.keys() if k.startswith("setup.opt.nufilt.r_p."))
    app.number_input(key=key).set_value(7).run()
    assert_clean(app)
    params = url(app)
    assert params["methods"] == ["nufilt,task_arithmetic"] and params["seed"] == ["3"]
    assert "nufilt.r_p:7" in params["opt"]
    order = [m.value for m in app.markdown if "→" in m.value]

    link = new_session({name: value if name == "opt" else value[-1] for name, value in params.items()})
    assert_clean(link)
    assert link.multiselect(key="setup.methods").value == ["nufilt", "task_arithmetic"]
    assert link.radio(key="setup.order_mode").value == "random"
    assert link.number_input(key="setup.seed").value == 3
    assert link.number_input(key=key).value == 7
    assert [m.value for m in link.markdown if "→" in m.value] == order


def test_a_bad_link_parameter_is_named_and_the_rest_still_applies():
    link = new_session({"tasks": "many", "methods": "opcm", "colour": "red"})
    assert not link.exception
    warning = " ".join(w.value for w in link.warning)
    assert "tasks" in warning and "not a whole number" in warning and "colour" in warning
    assert link.multiselect(key="setup.methods").value == ["opcm"]


def test_a_reload_restores_the_step_and_a_restarted_server_reads_it_from_disk(app):
    app.switch_page("pages/merge.py").run()
    settle(app.button(key="merge.step").click().run())
    settle(app.button(key="merge.step").click().run())
    assert "Step 2 / 3" in step_line(app)
    params = {name: value[-1] for name, value in url(app).items()}

    reloaded = new_session(params, "pages/merge.py")  # the same server: re-attached to the run in memory
    assert_clean(reloaded)
    assert "Step 2 / 3" in step_line(reloaded)

    from pages import ui

    ui.job_for.clear()  # a restarted server: nothing in memory, the run comes from its file
    restarted = new_session(params, "pages/merge.py")
    assert_clean(restarted)
    assert "Step 2 / 3" in step_line(restarted)
    settle(restarted.button(key="merge.reset").click().run())
    assert "Step 0 / 3" in step_line(restarted)
    ui.job_for.clear()
    assert "Step 0 / 3" in step_line(new_session(params, "pages/merge.py"))  # the reset removed the file


def test_a_stale_click_is_refused_with_a_reason_and_merges_nothing(app):
    app.switch_page("pages/merge.py").run()
    settle(app.button(key="merge.step").click().run())
    from pages import ui

    job = next(job for job in ui._JOBS.values() if job.steps_done == 1)
    app.session_state["merge.refusal"] = job.request(0, 1)  # what `ui._request` does for a second click
    app.run()
    assert any("showed step 0 but the run is at step 1" in w.value for w in app.warning)
    assert "Step 1 / 3" in step_line(app)


def test_quick_demo_switches_the_zoo_preset_without_a_restart(app):
    assert app.toggle(key="setup.quick").value is False
    assert any("Zoo preset `micro`" in c.value for c in app.caption)
    from pages import ui

    app.session_state["setup.quick"] = True  # (not built here: the toggle only names the preset)
    assert ui.appstate.pool_size("tiny-vit", "quick") == 20
    assert appurl.settings_to_params({"quick": True}, {"quick": False}) == {"quick": "1"}
