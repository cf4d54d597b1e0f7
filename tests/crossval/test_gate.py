"""The reproducibility gate (``image build --require-reproducible``) at the admission function, over real builds,
real varied rebuilds and the rebuild attestations they sign: refused while the recheck disagrees, admitted once a
varied rebuild agrees; a peer's published attestation counts too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from farm.build.variation import Variation
from farm.crossval.admission import Built, check_reproducible
from farm.crossval.publish import publish
from farm.crossval.recheck import recheck_one
from farm.crossval.results import load_result
from farm.errors import E, FarmError
from tests.conftest import require
from tests.crossval.helpers import make_org, request, source_repo

pytestmark = pytest.mark.integration


def test_refused_while_the_recheck_disagrees_admitted_once_it_agrees(tmp_path: Path) -> None:
    require("bwrap")
    require("faketime")
    require("diffoscope")
    repo = tmp_path / "src"
    commit = source_repo(repo, {"f": "x\n"})
    alpha, beta = make_org(tmp_path, "alpha"), make_org(tmp_path, "beta")
    req = request(repo, commit, "stamp", ['date +%Y > "$OUT/year"'], ["year"])
    record = alpha.build(req)
    pkg = Built("stamp", "year", record.outputs()["year"], record.build_key)

    with pytest.raises(FarmError) as err:
        check_reproducible([pkg], trust=None, settings=alpha.settings)
    assert err.value.code == E.ADMISSION_REFUSED
    assert "stamp/year" in err.value.message and "no varied rebuild attests it" in err.value.message

    # The clock 400 days ahead: another year in the output.
    ctx = replace(alpha.context(), variation=Variation())
    differs = recheck_one(req, record, ctx, alpha.settings)
    assert not differs.reproducible and differs.attestations
    with pytest.raises(FarmError) as err:
        check_reproducible([pkg], trust=None, settings=alpha.settings)
    assert "self's varied rebuild differs (year; likely cause: timestamps)" in err.value.message

    # Varied in everything but the clock: it agrees, and that admits it.
    same_year = replace(alpha.context(), variation=replace(Variation(), clock_shift_days=0))
    agrees = recheck_one(req, record, same_year, alpha.settings)
    assert agrees.reproducible and agrees.vary
    assert load_result(alpha.settings, record.build_key) == agrees
    [verdict] = check_reproducible([pkg], trust=None, settings=alpha.settings)
    assert verdict.agreed == ("self",)

    # beta rechecked nothing itself: alpha's published attestation admits it, and only with alpha's real key.
    publish(alpha.settings, str(tmp_path / "published" / "alpha"))
    trust = tmp_path / "peers.toml"
    trust.write_text(f'[peers.alpha]\nkey = "{alpha.pem}"\nlog = "{tmp_path / "published" / "alpha"}"\n')
    [verdict] = check_reproducible([pkg], trust=trust, settings=beta.settings)
    assert verdict.agreed == ("alpha",)
    trust.write_text(f'[peers.alpha]\nkey = "{beta.pem}"\nlog = "{tmp_path / "published" / "alpha"}"\n')
    with pytest.raises(FarmError) as err:
        check_reproducible([pkg], trust=trust, settings=beta.settings)
    assert "peer alpha's rebuild attestations unusable" in err.value.message
