"""The shape of a spec, checked by its schema: every mistake is one line naming the file, the
key path, what is wrong and the fix (exit 2, nothing written), never a traceback; names that
become file names are safe; duplicates and values that cannot be true are spec errors."""

import pytest

from mutualbench.cli import main
from mutualbench.studies.spec import expand, load_spec

SPEC = """
[study]
name = "s"
data = "tiny3"
classes = ["ant", "bee", "cow"]
seeds = 1

[defaults]
"data.batch_size" = 16

[[arms]]
name = "student"
method = "individual"
arch = "seed_vgg_student"
published = { model = 60.0 }

[[arms]]
name = "dml"
method = "mutual"
arch = "seed_vgg_student"
cohort = 2

[[comparisons]]
a = "dml"
b = "student"

[[contrasts]]
name = "gain"
weights = { dml = 1, student = -1 }

[[ablations]]
name = "aug"
arms = ["student"]
values = { on = {}, off = { "data.flip" = false } }

[profiles.smoke]
tolerance = 0.5
"""
STUDY = '[study]\nname = "s"\ndata = "tiny3"\nclasses = ["ant", "bee", "cow"]\nseeds = 1\n'
ARMS = SPEC[SPEC.index("[[arms]]"):SPEC.index("[[comparisons]]")]
FULL_ADAM = '{ name = "adam", lr = 0.01, betas = [0.9, 0.999], weight_decay = 0.0, momentum = 0.9, nesterov = false'


def spec_error(tmp_path, capsys, text: str) -> str:
    """``replicate`` of the spec ``text``: exit 2 with one ``error:`` line (returned), nothing written."""
    path = tmp_path / "s.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["replicate", str(path), "--profile", "smoke", "--data", "/nonexistent.tar.gz", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err.strip()


SHAPES = [  # (replace this, with this), the error's text after "error: <file>: "
    ((STUDY, "study = 5\n"),
     'study = 5 is not allowed; it must be a table, e.g. [study] with name = "...", data = "cifar10"'),
    (("[profiles.smoke]\ntolerance = 0.5", "[profiles]\nsmoke = 3"),
     "profiles.smoke = 3 is not allowed; it must be a table ([profiles.<name>]) with tolerance"),
    ((ARMS, ""), None),  # replaced below: arms as a list of strings
    (('arms = ["student"]\n', ""), "[[ablations]] #1 (aug) needs 'arms', e.g. arms = [\"student\", \"dml\"]"),
    (('method = "individual"', 'method = ["individual"]'),
     '[[arms]] #1 (student) method = ["individual"] is not allowed; it must be a method\'s name'),
    (('values = { on = {}, off = { "data.flip" = false } }', 'values = ["on", "off"]'),
     '[[ablations]] #1 (aug) values = ["on", "off"] is not allowed; it must be a table of value names'),
    (('name = "student"', "name = 5"), "[[arms]] #1 name = 5 is not allowed; it must be a name of letters, digits"),
    (('published = { model = 60.0 }', 'published = "60"'),
     "[[arms]] #1 (student) published = '60' is not allowed; it must be a table of each member's published accuracy"),
    (('published = { model = 60.0 }', 'published = { model = "high" }'),
     "[[arms]] #1 (student) published.model = 'high' is not allowed (a string, not a number); it must be a number "
     "from 0 to 100"),
    (('published = { model = 60.0 }', 'published = { model = 160.0 }'),
     "[[arms]] #1 (student) published.model = 160.0 is not allowed (an accuracy in percent is between 0 and 100)"),
    (('published = { model = 60.0 }', 'published = { student1 = 60.0 }'),
     "[[arms]] #1 (student) published.student1: the arm has no member 'student1' (runs of method 'individual' "
     "record model)"),
    (("weights = { dml = 1, student = -1 }", "weights = { dml = inf, student = -inf }"),
     "[[contrasts]] #1 (gain) weights.dml = inf is not allowed (not a finite number); it must be a finite, non-zero number"),
    (("weights = { dml = 1, student = -1 }", "weights = { dml = nan, student = -1 }"),
     "[[contrasts]] #1 (gain) weights.dml = nan is not allowed (not a finite number)"),
    (("tolerance = 0.5", "tolerance = nan"),
     "[profiles.smoke] tolerance = nan is not allowed (not a finite number); it must be a finite number >= 0"),
    (("tolerance = 0.5", "tolerance = inf"), "[profiles.smoke] tolerance = inf is not allowed (not a finite number)"),
    (("tolerance = 0.5", "tolerance = true"),
     "[profiles.smoke] tolerance = true is not allowed (a boolean, not a number); it must be a finite number >= 0"),
    (("tolerance = 0.5", "tolerance = -1"), "[profiles.smoke] tolerance = -1 is not allowed; it must be a finite number >= 0"),
    (("tolerance = 0.5", "tolerance = 0.5\nloss_rtol = 0"),
     "[profiles.smoke] loss_rtol = 0 is not allowed; it must be a relative tolerance between 0 and 1, exclusive"),
    (("tolerance = 0.5", "tolerance = 0.5\nloss_rtol = 2"),
     "[profiles.smoke] loss_rtol = 2 is not allowed; it must be a relative tolerance between 0 and 1, exclusive"),
    (('name = "s"', 'name = ""'), "[study] name = '' is not allowed (empty); it must be a name of letters"),
    (('name = "s"', "name = 3"), "[study] name = 3 is not allowed; it must be a name of letters"),
    (('name = "student"', 'name = ""'), "[[arms]] #1 name = '' is not allowed (empty)"),
    (("seeds = 1", "seeds = 1000"),
     "[study] seeds = 1000 is not allowed; it must be a positive integer (the number of seeds), at most 100"),
    (("[[comparisons]]", "[[comparisons]]\nfamily = 3"), "[[comparisons]] #1 family = 3 is not allowed; it must be a one-line string without '|'"),
    (("tolerance = 0.5", "tolerance = 0.5\ncolour = 1"),
     "unknown key(s) colour in [profiles.smoke]; allowed: delta, description, failed_below, loss_rtol, seeds, set, tolerance"),
    (("tolerance = 0.5", "tolerance = 0.5\nseeds = 0"),
     "[profiles.smoke] seeds = 0 is not allowed; it must be a positive integer (the seeds the profile plans: run "
     "when replicate --seeds is not given, and the n at which its claims are decided), at most 100"),
    (("tolerance = 0.5", "tolerance = 0.5\ndelta = 0"),
     "[profiles.smoke] delta = 0 is not allowed; it must be a number > 0: the smallest effect that matters, in "
     "accuracy points"),
    (("tolerance = 0.5", "tolerance = 0.5\nseeds = 101"), "[profiles.smoke] seeds = 101 is not allowed"),
    (("tolerance = 0.5", 'tolerance = 0.5\nseeds = "2"'), "[profiles.smoke] seeds = '2' is not allowed"),
]


@pytest.mark.parametrize("edit,message", SHAPES, ids=[str(i) for i in range(len(SHAPES))])
def test_spec_shape_errors_name_the_key_path(tmp_path, capsys, edit, message):
    text = SPEC.replace(*edit)
    assert text != SPEC
    if message is None:  # arms that are not tables
        text = 'arms = ["student", "dml"]\n' + text
        message = '[[arms]] #1 = \'student\' is not allowed; it must be a table ([[arms]]) with name, method and arch'
    err = spec_error(tmp_path, capsys, text)
    assert err.startswith(f"error: {tmp_path / 's.toml'}: {message}"), err


@pytest.mark.parametrize("edit,message", [
    # names that become file names (curves_<arm>.png, study folders): no separators, no '..'
    (('name = "student"', 'name = "../../../rel_escaped"'), "[[arms]] #1 (../../../rel_escaped) name = "
     "'../../../rel_escaped' is not allowed (it has '/'); it must be a name of letters, digits, _, . and -"),
    (('name = "student"', 'name = "a/b"'), "[[arms]] #1 (a/b) name = 'a/b' is not allowed"),
    (('name = "aug"', 'name = "x/y"'), "[[ablations]] #1 (x/y) name = 'x/y' is not allowed"),
    (('off = {', '"../v" = {'), "[[ablations]] #1 (aug) values: the name '../v' is not allowed (it has '/')"),
    (("[profiles.smoke]", '[profiles."a b"]'), "profiles: the name 'a b' is not allowed (it has ' ')"),
    (('name = "student"', 'name = "x..y"'), "[[arms]] #1 (x..y) name = 'x..y' is not allowed (it has '..')"),
    (('name = "s"', 'name = ".hidden"'), "[study] name = '.hidden' is not allowed (it starts with '.')"),
])
def test_names_that_become_file_names_are_checked(tmp_path, capsys, edit, message):
    assert message in spec_error(tmp_path, capsys, SPEC.replace(*edit))


@pytest.mark.parametrize("edit,message", [
    (("[profiles.smoke]", '[[ablations]]\nname = "aug"\narms = ["dml"]\nvalues = { a = {} }\n\n[profiles.smoke]'),
     "[[ablations]] #2 (aug): ablation name 'aug' is used twice (its runs would be pooled into one row)"),
    (('arms = ["student"]', 'arms = ["student", "student"]'),
     "[[ablations]] #1 (aug) arms: 'student' is listed twice (its runs would count twice)"),
    (('name = "dml"', 'name = "student"'), "[[arms]] #2 (student): arm name 'student' is used twice"),
    (('b = "student"', 'b = "dml"'), "[[comparisons]] #1: a and b are both 'dml'; a comparison needs two different arms"),
    (("[[contrasts]]", '[[comparisons]]\na = "dml"\nb = "student"\n\n[[contrasts]]'),
     "[[comparisons]] #2: dml vs student is listed twice"),
])
def test_duplicates_and_self_comparisons_are_spec_errors(tmp_path, capsys, edit, message):
    assert message in spec_error(tmp_path, capsys, SPEC.replace(*edit))


@pytest.mark.parametrize("edit,message", [
    (('"data.batch_size" = 16', '"train.optimizer" = { name = "adam", lr = 0.01 }'),
     "[defaults]: train.optimizer: the table leaves out betas, weight_decay, momentum, nesterov; a table replaces "
     "the whole section"),
    (('"data.batch_size" = 16', f'"train.optimizer" = {FULL_ADAM}, bogus = 1 }}'),
     "[defaults]: train.optimizer: unknown key(s) 'bogus' in the table"),
    (('"data.batch_size" = 16', '"train" = { epochs = 2, optimizer = { name = "adam" }, schedule = {} }'),
     "[defaults]: train.optimizer: the table leaves out lr"),
    (('cohort = 2', 'cohort = 2\nset = { "method" = "kd" }'),
     "[[arms]] #2 (dml) set: 'method' cannot be set here (it would be ignored: give it as the arm's method"),
    (('"data.batch_size" = 16', '"seed" = 5'),
     "[defaults]: 'seed' cannot be set here (it would be ignored: the seeds are 0..N-1"),
    (('off = { "data.flip" = false }', 'off = { "data.source" = "cifar100" }'),
     "value 'off': 'data.source' cannot be set here (it would be ignored: the data set is [study] data"),
])
def test_every_setting_is_used_or_an_error(tmp_path, capsys, edit, message):
    assert message in spec_error(tmp_path, capsys, SPEC.replace(*edit))


@pytest.mark.parametrize("setting,message", [
    ('train.optimizer={"name": "adam"}', "--set: train.optimizer: the table leaves out lr, betas"),
    ('train.optimizer={"name": "adam", "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0, "momentum": 0.9, '
     '"nesterov": false, "bogus": 1}', "--set: train.optimizer: unknown key(s) 'bogus' in the table"),
])
def test_partial_or_unknown_tables_through_set(tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    assert main(["run", "--method", "individual", "--set", setting, "--data", "/nonexistent.tar.gz",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_claims_families_and_descriptions_are_accepted(tmp_path):
    text = SPEC.replace("[[comparisons]]", '[[comparisons]]\nfamily = "main"') + """
[[claims]]
name = "dml_beats_student"
text = "DML beats the student"
comparison = "dml vs student"
expect = "positive"
rule = { alpha = 0.01 }
published = "+7.17"
"""
    path = tmp_path / "s.toml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.raw["claims"][0]["published"] == "+7.17" and spec.comparisons[0]["family"] == "main"
    assert [p.arm for p in expand(spec, "smoke", [0], "x", False)] == ["student", "dml"]


def _replicate_error(tmp_path, capsys, spec) -> str:
    out = tmp_path / "out"
    assert main(["replicate", str(spec), "--profile", "smoke", "--data", "/nonexistent.tar.gz", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


def test_a_spec_that_is_a_fifo_or_a_device_is_refused_unread(tmp_path, capsys):
    import os
    import threading

    fifo = tmp_path / "s.toml"
    os.mkfifo(fifo)
    done = threading.Event()
    result = {}

    def replicate():
        result["err"] = _replicate_error(tmp_path, capsys, fifo)
        done.set()

    threading.Thread(target=replicate, daemon=True).start()
    assert done.wait(30), "replicate of a FIFO spec hangs"
    assert f"error: study spec {fifo} is not a regular file" in result["err"]
    err = _replicate_error(tmp_path, capsys, "/dev/zero")  # would read until memory is gone
    assert "error: study spec /dev/zero is not a regular file" in err


def test_an_oversized_or_too_deeply_nested_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC + "#" * (1 << 20))
    assert "is over 1,048,576 bytes (the limit for a study spec)" in _replicate_error(tmp_path, capsys, spec)
    spec.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n" + SPEC)
    assert "nested too deeply to read" in _replicate_error(tmp_path, capsys, spec)


@pytest.mark.parametrize("line", ['name = "a | b"', 'text = "two\\nlines"'])
def test_claim_names_and_texts_are_one_table_row(tmp_path, capsys, line):
    claim = dict(name='name = "c"', text='text = "dml beats the student"')
    claim[line.split(" =")[0]] = line
    text = SPEC + f'\n[[claims]]\n{claim["name"]}\n{claim["text"]}\ncomparison = "dml vs student"\nexpect = "positive"\n'
    err = spec_error(tmp_path, capsys, text)
    assert "which would break the row of table.md it lands in" in err, err


def test_a_line_break_in_an_option_stays_on_the_error_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    assert main(["replicate", str(spec), "--profile", "smo\nke", "--data", "/nonexistent.tar.gz",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "smo\\nke" in err, err
