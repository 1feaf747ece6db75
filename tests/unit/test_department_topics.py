"""The department topics a deployment makes before the worker starts."""

from citybrain.kafka_admin import department_topics
from citybrain.topics import Topics


def test_each_department_gets_its_alert_and_ticket_topic_under_the_prefix() -> None:
    got = department_topics(Topics(prefix="p."), ["eeb", "street.chaoyang.wangjing"], 4)
    assert got == {
        "p.city.alerts.dept.eeb": 4,
        "p.city.hotline.dept.eeb": 4,
        "p.city.alerts.dept.street.chaoyang.wangjing": 4,
        "p.city.hotline.dept.street.chaoyang.wangjing": 4,
    }


def test_without_tickets_only_the_alert_topics() -> None:
    assert department_topics(Topics(prefix="p."), ["eeb"], 2, hotline=False) == {"p.city.alerts.dept.eeb": 2}
