"""The fuzzy key-value store on the real GloVe 6B 50-d table, against a NumPy reimplementation."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from fuzzy_kv import DEMO_RECORDS, Database, Embeddings, OutOfVocabulary
from fuzzy_kv import decode
from tests.conftest import PYTHON, REPO, run_env


@pytest.fixture(scope="module")
def glove() -> Embeddings:
    return Embeddings.glove()


@pytest.fixture(scope="module")
def demo(glove) -> Database:
    return Database(DEMO_RECORDS, embeddings=glove)


def numpy_recipe(glove: Embeddings, records, word, k, beta=1.0):
    """The classic recipe, written out in float64 NumPy over the whole vocabulary."""
    E = np.asarray(glove.vectors, np.float64)
    idx = glove.index
    K = np.stack([E[idx[key]] for key in records])
    V = np.stack([E[idx[value]] for value in records.values()])
    s = beta * (K @ E[idx[word]])
    w = np.exp(s - s.max())
    w /= w.sum()
    out = w @ V
    cos = (E @ out) / (np.linalg.norm(E, axis=1) * np.linalg.norm(out))
    top = np.argsort(-cos, kind="stable")[:k]
    return [glove.words[i] for i in top], cos[top]


@pytest.mark.parametrize("word", ["seven", "rhombus", "female", "kitten", "cat", "bicycle"])
def test_recipe_matches_numpy_on_real_glove(glove, demo, word):
    words, scores = numpy_recipe(glove, DEMO_RECORDS, word, 10)
    got = demo.explain(word, 10).answers
    assert [a.word for a in got] == words
    np.testing.assert_allclose([a.score for a in got], scores, atol=1e-5)


def test_hallucination_happens_and_is_marked(demo):
    answers = demo.explain("seven", 5).answers
    assert answers[0].word == "number" and answers[0].stored
    assert any(not a.stored for a in answers[1:])  # e.g. "numbers", "ten": never stored


def test_batched_equals_one_by_one(demo):
    words = ["seven", "rhombus", "female", "kitten", "paris", "run", "the", "cat"]
    assert demo.query_many(words, k=7) == [demo.query(w, k=7) for w in words]


def test_stored_key_recalls_its_value_at_high_beta(glove):
    db = Database(DEMO_RECORDS, embeddings=glove, beta=10.0)
    assert db.query("cat")[0] == "animal"
    weights = db.explain("cat").weights
    # Raw dot products favour long vectors: cat . dog > cat . cat in GloVe, so most weight goes
    # to "dog"; both map to "animal".
    assert weights["cat"] + weights["dog"] > 0.99 and sum(weights.values()) == pytest.approx(1.0)
    cosine = Database(DEMO_RECORDS, embeddings=glove, similarity="cosine", beta=50.0)
    assert max(cosine.explain("cat").weights.items(), key=lambda kv: kv[1])[0] == "cat"


def test_similarities_and_options(glove):
    # Each similarity against NumPy: softmax(beta * scores) over the stored keys, the blend of
    # the values, its 3 nearest words by cosine.
    keys = np.stack([glove.vector(k) for k in DEMO_RECORDS]).astype(np.float64)
    values = np.stack([glove.vector(v) for v in DEMO_RECORDS.values()]).astype(np.float64)
    q = np.asarray(glove.vector("kitten"), np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    scores = {"dot": keys @ q, "scaled_dot": keys @ q / np.sqrt(len(q)), "cosine": unit(keys) @ unit(q)}
    for similarity, s in scores.items():
        w = np.exp(5.0 * (s - s.max()))
        blend = (w / w.sum()) @ values
        expected = [glove.words[i] for i in np.argsort(-(np.asarray(glove.unit, np.float64) @ unit(blend)))[:3]]
        db = Database(DEMO_RECORDS, embeddings=glove, similarity=similarity, beta=5.0)
        assert db.query("kitten", 3) == expected, similarity
    excl = Database({"cat": "dog"}, embeddings=glove, exclude_query=True)
    assert "cat" not in excl.query("cat", 20)
    only = Database(DEMO_RECORDS, embeddings=glove, values_only=True)
    answers = only.explain("seven", 3).answers
    assert all(a.stored for a in answers) and answers[0].word == "number"
    with pytest.raises(ValueError, match="more answers"):
        only.query("seven", k=10)


def test_multi_word_keys_and_values_use_the_mean(glove):
    db = Database({"big cat": "wild animal"}, embeddings=glove, beta=1.0)
    mean = (glove.vector("wild") + glove.vector("animal")) / 2
    top = db.answers(["tiger"], 1)[0][0]
    cos = glove.unit @ (mean / np.linalg.norm(mean))
    assert top.word == glove.words[int(np.argmax(cos))]


def test_out_of_vocabulary_raises_a_key_error_with_suggestions(demo, glove):
    with pytest.raises(OutOfVocabulary) as info:
        demo.query("Rhombus")
    assert isinstance(info.value, KeyError) and info.value.word == "Rhombus"
    assert "rhombus" in str(info.value) and "not in the vocabulary" in str(info.value)
    with pytest.raises(OutOfVocabulary, match="record value word 'animalz'"):
        Database({"cat": "animalz"}, embeddings=glove)


@pytest.mark.parametrize("records,message", [({}, "non-empty"), ({"cat": 3}, "strings"), ({1: "x"}, "strings"),
                                             ({"cat": " "}, "empty"), (["cat"], "mapping")])
def test_bad_records_raise_value_errors(glove, records, message):
    with pytest.raises(ValueError, match=message):
        Database(records, embeddings=glove)


def test_bad_k_and_beta(demo, glove):
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            demo.query("cat", k=k)
    for beta in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            Database(DEMO_RECORDS, embeddings=glove, beta=beta)
    with pytest.raises(ValueError, match="similarity"):
        Database(DEMO_RECORDS, embeddings=glove, similarity="l2")


def test_block_decoding_is_exact():
    rng = np.random.default_rng(0)
    vocab = rng.standard_normal((1000, 8)).astype(np.float32)  # 1000 is no multiple of the block
    unit = vocab / np.linalg.norm(vocab, axis=1, keepdims=True)
    queries = rng.standard_normal((70, 8)).astype(np.float32)
    exclude = np.where(np.arange(70) % 3 == 0, np.arange(70), -1).astype(np.int32)
    for block in (7, 64, 512):
        scores, ids = decode.top_k_cosine(queries, decode.pad_vocabulary(unit, block), 9, exclude, block=block)
        full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
        full[np.arange(70)[exclude >= 0], exclude[exclude >= 0]] = -np.inf
        expect = np.argsort(-full, axis=1, kind="stable")[:, :9]
        np.testing.assert_array_equal(np.asarray(ids), expect)
        np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(full, expect, 1), atol=1e-6)


def test_loaders_for_text_and_npy(tmp_path):
    text = "cat 1 0 0\ndog 0.9 0.1 0\nnumber 0 1 0\nseven 0 0.95 0.1\nanimal 1 0.05 0\n"
    glove_file = tmp_path / "tiny.txt"
    glove_file.write_text(text)
    w2v_file = tmp_path / "tiny.vec"
    w2v_file.write_text("5 3\n" + text)
    for path in (glove_file, w2v_file):
        emb = Embeddings.load(path)
        assert emb.words == ["cat", "dog", "number", "seven", "animal"] and emb.dim == 3
        db = Database({"cat": "animal", "seven": "number"}, embeddings=emb, beta=5.0)
        assert db.query("dog", 1) == ["animal"]
    np.save(tmp_path / "m.npy", Embeddings.load(glove_file).vectors)
    (tmp_path / "m.txt").write_text("\n".join(["cat", "dog", "number", "seven", "animal"]))
    assert Embeddings.load(tmp_path / "m.npy").words[-1] == "animal"
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 0\ndog 1\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        Embeddings.load(bad)


def _cli(*argv):
    return subprocess.run([PYTHON, "-m", "fuzzy_kv", *argv], capture_output=True, text=True, env=run_env(), cwd=REPO,
                          timeout=300)


def test_command_line(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps({"one": "number", "cat": "animal", "sphere": "shape"}))
    done = _cli("--records", str(records), "seven", "rhombus", "--k", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("seven: number* ") and lines[1].startswith("rhombus: shape* ")
    done = _cli("--json", "--beta", "10", "cat", "female")
    out = json.loads(done.stdout)
    assert out[0]["answers"][0] == {"word": "animal", "score": pytest.approx(1.0, abs=1e-3), "stored": True}
    assert out[1]["answers"][0]["word"] == "gender" and set(out[1]["weights"]) == set(DEMO_RECORDS)


@pytest.mark.parametrize("argv,message", [(["Rhombus"], "did you mean 'rhombus'"), (["--k", "0", "cat"], "k must be"),
                                          (["--beta", "-1", "cat"], "beta"), (["--records", "nope.json", "cat"], "nope.json"),
                                          (["--similarity", "l2", "cat"], "invalid choice"), ([], "required")])
def test_command_line_bad_input(argv, message):
    done = _cli(*argv)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_hallucination_curve_on_glove(glove):
    from fuzzy_kv.measure import hallucination_curve

    curve = hallucination_curve(glove, betas=(0.01, 1.0, 30.0))
    assert list(curve["beta"]) == [0.01, 1.0, 30.0]
    total = curve["right"] + curve["wrong_stored"] + curve["hallucinated"]
    np.testing.assert_allclose(total, 1.0)
    # A near-uniform blend (tiny beta) decodes to words near the mean of all values, which are
    # rarely stored values; sharp attention answers with stored values.
    assert curve["hallucinated"].iloc[0] > curve["hallucinated"].iloc[-1]
    assert curve["right"].iloc[-1] > 0.5


def test_any_finite_beta_answers_and_matches_the_hard_maximum(demo, glove):
    """beta 1e9 once printed 'nan' for every answer (jit fused beta*s - max(beta*s) to 255, not 0)."""
    sharp = Database(DEMO_RECORDS, embeddings=glove, beta=1e9)
    words, _ = numpy_recipe(glove, DEMO_RECORDS, "seven", 5, beta=1e3)  # float64: already the hard max
    assert sharp.query("seven") == words
    weights = sharp.explain("seven").weights
    assert all(np.isfinite(list(weights.values()))) and max(weights.values()) == pytest.approx(1.0)


def test_the_api_checks_types_and_accepts_numpy_numbers(demo, glove):
    for bad in (None, 123):
        with pytest.raises(TypeError, match=r"a query is a word or phrase \(str\)"):
            demo.query(bad)
    with pytest.raises(TypeError, match="got 5"):
        demo.query_many(["cat", 5])
    with pytest.raises(TypeError, match="list of strings"):
        demo.query_many(7)
    assert demo.query("cat", k=np.int64(2)) == demo.query("cat", k=2)
    assert Database(DEMO_RECORDS, embeddings=glove, beta=np.float32(2.0)).query("cat", 1) == ["animal"]


def test_k_counts_the_excluded_query_word():
    emb = Embeddings(["cat", "animal", "dog"], np.eye(3, dtype=np.float32))
    db = Database({"cat": "animal", "dog": "animal"}, embeddings=emb, values_only=True, exclude_query=True)
    assert db.query("cat", k=1) == ["animal"]
    with pytest.raises(ValueError, match=r"k = 1 is more answers than the 0 words .*query itself is excluded"):
        db.query("animal", k=1)  # the only stored value is the query: nothing left to answer with


def test_a_table_with_nan_is_refused_naming_the_row():
    vectors = np.ones((4, 3), np.float32)
    vectors[2, 1] = np.nan
    vectors[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"row 2 \('c'\) holds NaN or inf \(2 rows do\)"):
        Embeddings(["a", "b", "c", "d"], vectors)


def test_bad_files_are_named_without_echoing_their_contents(tmp_path):
    secret = tmp_path / "vectors.txt"
    secret.write_text("cat 0.1 0.2\npassword hunter2 swordfish\n")
    with pytest.raises(ValueError) as info:
        Embeddings.load(secret)
    assert "vectors.txt:2" in str(info.value) and "hunter2" not in str(info.value)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    done = _cli("--records", str(deep), "cat")
    assert done.returncode == 2 and "nested too deeply" in done.stderr and len(done.stderr.strip().splitlines()) == 1
