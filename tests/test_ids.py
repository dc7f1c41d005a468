from __future__ import annotations

import pytest

from service_ambitions.domain.ids import feature_id


@pytest.mark.parametrize(
    ("name", "role", "plateau", "expected"),
    [
        ("Example", "learners", "Foundational", "P545N4"),
        ("learners feat", "learners", "Foundational", "4MKSIA"),
    ],
)
def test_feature_id_check_values(name: str, role: str, plateau: str, expected: str) -> None:
    assert feature_id(name, role, plateau) == expected


def test_feature_id_depends_on_every_part() -> None:
    base = feature_id("Example", "learners", "Foundational")
    assert feature_id("Example", "academics", "Foundational") != base
    assert feature_id("Example", "learners", "Enhanced") != base
    assert feature_id("example", "learners", "Foundational") != base
    assert len(base) == 6
    assert base.isalnum()
    assert base.isupper() or any(char.isdigit() for char in base)
