"""12345 hotline calls (接诉即办): who calls, about what, from where, when.

Callers get generated names and mobile numbers that look real (they are PII
downstream: the intake hashes them). Descriptions come from templates filled
with the street, a residential compound and a road, so they read like the
transcripts operators type.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from schemas import HotlineCategory, HotlineEvent, TicketStatus
from sim.geo import Cell, Street

BEIJING = timezone(timedelta(hours=8))
C = HotlineCategory

TEMPLATES: dict[HotlineCategory, tuple[str, ...]] = {
    C.NOISE: (
        "{community}附近工地夜间施工，噪音很大，影响休息，希望尽快处理。",
        "{road}边上有商户外放音响，声音特别大，持续很久了。",
        "{community}楼下广场舞音响太吵，晚上还在跳。",
        "{street}{community}旁边工地半夜还在打桩，已经几个晚上睡不着了。",
    ),
    C.GARBAGE: (
        "{community}垃圾桶满了好几天没人清运，气味很大。",
        "{road}路边有人乱倒建筑垃圾，请派人清理。",
        "{community}垃圾分类站没人值守，垃圾堆到路上了。",
    ),
    C.ROAD_DAMAGE: (
        "{road}靠近{community}的路面有个大坑，车辆经过很危险。",
        "{street}{road}人行道地砖松动翘起，老人容易绊倒。",
        "{road}井盖缺失，晚上看不清，存在安全隐患。",
    ),
    C.HEATING: (
        "{community}暖气不热，室内只有十四五度，家里有老人孩子。",
        "{community}今天突然停暖了，没有接到任何通知，什么时候恢复？",
        "{street}{community}整栋楼暖气都是凉的，物业说是管线问题。",
    ),
    C.WATER_OUTAGE: (
        "{community}突然停水了，没有提前通知，请问什么时候来水？",
        "{community}自来水发黄，有异味，不敢用。",
    ),
    C.FLOODING: (
        "{road}积水很深，已经有车辆熄火被困。",
        "{community}门口积水没过脚踝，下水道往外冒水。",
        "{street}{road}附近积水严重，建议马上封路。",
        "{community}地下车库进水了，请求排水支援。",
        "{road}路面大面积积水，公交车都过不去了。",
    ),
    C.ODOUR: (
        "{community}附近有很刺鼻的气味，不知道哪里来的。",
        "{road}边上的污水井臭味很大，持续好几天了。",
    ),
    C.ILLEGAL_PARKING: (
        "{community}消防通道被私家车堵住了，请处理。",
        "{road}路口有车长期违停，影响通行。",
    ),
    C.AIR_POLLUTION: (
        "{street}这两天空气很差，雾霾很重，有没有污染源在排放？",
        "{community}附近有工厂冒黑烟，空气呛人。",
        "{road}附近烟尘很大，嗓子难受，请环保部门查一下。",
    ),
    C.TRAFFIC: (
        "{road}堵得走不动，半小时没挪几米，是不是出事故了？",
        "{road}红绿灯坏了，路口一片混乱。",
        "{street}{road}拥堵严重，请交警过来疏导。",
    ),
    C.GAS_SMELL: (
        "{road}靠近{community}的燃气井附近有很浓的煤气味，担心泄漏。",
        "{community}楼下闻到一股天然气味，越来越重，请燃气公司来看看。",
        "{street}{road}路边井盖冒出燃气味道，路人都在捂鼻子。",
    ),
    C.OTHER: (
        "咨询{street}社区办理居住证需要哪些材料。",
        "{community}小区门禁坏了好几天，物业不管。",
        "反映{road}公交站牌信息过时，请更新。",
    ),
}

# background mix (weights); heating and flooding depend on the season
_MIX = {C.NOISE: 14, C.GARBAGE: 10, C.ROAD_DAMAGE: 8, C.HEATING: 0, C.WATER_OUTAGE: 5, C.FLOODING: 0,
        C.ODOUR: 4, C.ILLEGAL_PARKING: 10, C.AIR_POLLUTION: 3, C.TRAFFIC: 8, C.GAS_SMELL: 1, C.OTHER: 20}  # fmt: skip
# calls per hour of the local day, relative (people call in working hours and the evening)
HOURLY = (0.15, 0.1, 0.06, 0.05, 0.05, 0.1, 0.3, 0.7, 1.3, 1.7, 1.8, 1.6,
          1.2, 1.3, 1.6, 1.6, 1.5, 1.3, 1.2, 1.3, 1.2, 1.0, 0.6, 0.3)  # fmt: skip

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍鹏辉建国红梅鑫宇浩然子轩欣怡雨萱思远晨阳志刚海燕春梅文博婷婷佳琪"
_MOBILE = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155", "156",
           "157", "158", "159", "166", "176", "177", "180", "181", "182", "185", "186", "187", "188", "189",
           "198", "199")  # fmt: skip
_COMMUNITY_SUFFIX = ("东里", "西里", "北里", "南里", "家园", "花园", "新村", "一区", "二区", "嘉园", "小区", "公寓")


def in_heating_season(t: int) -> bool:
    """Beijing's public heating season: 15 November to 15 March (local date)."""
    d = datetime.fromtimestamp(t, BEIJING)
    return (d.month, d.day) >= (11, 15) or (d.month, d.day) <= (3, 15)


def iso(t: int) -> str:
    """Epoch seconds -> ISO 8601 in Beijing time, as devices and the hotline send it."""
    return datetime.fromtimestamp(t, BEIJING).isoformat()


@dataclass(frozen=True, slots=True)
class Call:
    """One new ticket. `cause` is the label id of the incident behind it (None:
    background); it is ground truth, never sent on the wire."""

    t: int
    ticket_id: str
    category: HotlineCategory
    loc: dict[str, Any]
    description: str
    urgency: str
    channel: str
    caller_name: str
    caller_phone: str
    cause: str | None = None

    @property
    def event_id(self) -> str:
        return f"h-{self.ticket_id}-created"

    def payload(self) -> dict[str, Any]:
        """The MQTT wire form: HotlineEvent fields without caller_ref, caller in clear."""
        return {
            "event_id": self.event_id, "ticket_id": self.ticket_id, "kind": "created",
            "category": self.category.value, "status": "open", "ts": iso(self.t), "location": self.loc,
            "description": self.description, "urgency": self.urgency, "channel": self.channel,
            "caller_name": self.caller_name, "caller_phone": self.caller_phone,
        }

    def model(self) -> HotlineEvent:
        """The validated event as the intake would forward it, minus the caller (no key here)."""
        d = self.payload()
        del d["caller_name"], d["caller_phone"]
        return HotlineEvent.model_validate(d)


@dataclass(frozen=True, slots=True)
class TicketUpdate:
    """A later event of a ticket: a status change (in_progress = first contact,
    resolved) or the citizen's satisfaction feedback. Never carries the caller."""

    t: int
    ticket_id: str
    kind: str  # "status" | "feedback"
    status: TicketStatus
    category: HotlineCategory
    loc: dict[str, Any]
    urgency: str
    channel: str
    satisfaction: int | None = None
    cause: str | None = None

    @property
    def event_id(self) -> str:
        return f"h-{self.ticket_id}-{self.status.value if self.kind == 'status' else 'feedback'}"

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id, "ticket_id": self.ticket_id, "kind": self.kind,
            "category": self.category.value, "status": self.status.value, "ts": iso(self.t), "location": self.loc,
            "urgency": self.urgency, "channel": self.channel,
        }
        if self.satisfaction is not None:
            d["satisfaction"] = self.satisfaction
        return d

    def model(self) -> HotlineEvent:
        return HotlineEvent.model_validate(self.payload())


def follow_ups(seed: int, call: Call) -> list[TicketUpdate]:
    """What happens to a ticket after the call (接诉即办): first contact within
    minutes to hours (urgent faster, some late), resolution hours later, and
    feedback from most callers, mostly satisfied. Own rng per ticket, so the
    updates do not depend on which other tickets exist."""
    rng = random.Random(f"{seed}/ticket/{call.ticket_id}")
    urgent = call.urgency == "urgent"
    contact = rng.randint(5, 30) * 60 if urgent else rng.randint(10, 90) * 60
    if rng.random() < 0.1:  # some tickets wait far longer than the deadline
        contact = rng.randint(2, 8) * 3600
    resolve = rng.randint(30, 180) * 60 if urgent else rng.randint(60, 480) * 60
    if rng.random() < 0.15:
        resolve = rng.randint(12, 48) * 3600

    def update(t: int, kind: str, status: TicketStatus, satisfaction: int | None = None) -> TicketUpdate:
        return TicketUpdate(t=t, ticket_id=call.ticket_id, kind=kind, status=status, category=call.category,
                            loc=call.loc, urgency=call.urgency, channel=call.channel,
                            satisfaction=satisfaction, cause=call.cause)

    t1 = call.t + contact
    t2 = t1 + resolve
    out = [update(t1, "status", TicketStatus.IN_PROGRESS), update(t2, "status", TicketStatus.RESOLVED)]
    if rng.random() < 0.7:
        score = rng.choices((5, 4, 3, 2, 1), (50, 25, 10, 7, 8))[0]
        out.append(update(t2 + rng.randint(10, 360) * 60, "feedback", TicketStatus.RESOLVED, score))
    return out


def fake_name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2, 2))))


def fake_phone(rng: random.Random) -> str:
    return rng.choice(_MOBILE) + f"{rng.randrange(10**8):08d}"


def ticket_id(seed: int, stream: str, n: int, t: int) -> str:
    day = datetime.fromtimestamp(t, BEIJING).strftime("%Y%m%d")
    tag = hashlib.blake2b(f"{seed}/{stream}/{n}".encode(), digest_size=5).hexdigest()
    return f"BJ12345-{day}-{tag}"


def make_call(rng: random.Random, t: int, category: HotlineCategory, street: Street, tid: str,
              cause: str | None = None, urgent: float = 0.1, road: str | None = None,
              cell: Cell | None = None) -> Call:
    cell = cell or rng.choice(street.cells)
    short = street.name.removesuffix("街道").removesuffix("地区")
    community = short + rng.choice(_COMMUNITY_SUFFIX)
    text = rng.choice(TEMPLATES[category]).format(
        street=street.name, community=community, road=road or f"{short}路"
    )
    lat = round(cell.lat + rng.uniform(-0.002, 0.002), 6)
    lon = round(cell.lon + rng.uniform(-0.002, 0.002), 6)
    return Call(
        t=t, ticket_id=tid, category=category,
        loc={"district": street.district, "street": street.name, "grid": cell.id, "lat": lat, "lon": lon},
        description=text, urgency="urgent" if rng.random() < urgent else "normal",
        channel=rng.choices(("phone", "app", "web"), (0.75, 0.2, 0.05))[0],
        caller_name=fake_name(rng), caller_phone=fake_phone(rng), cause=cause,
    )


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:  # normal approximation; exact sampling below is O(mean)
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def background_calls(seed: int, streets: Sequence[Street], start: int, end: int,
                     per_hour: float) -> Iterator[Call]:
    """Everyday calls, hour by hour (each hour has its own rng, so any time
    range of the same run gives the same calls), in time order."""
    if per_hour <= 0 or not streets:
        return
    mean_profile = sum(HOURLY) / 24
    for hour in range(start - start % 3600, end, 3600):
        rng = random.Random(f"{seed}/calls/{hour}")
        local_hour = ((hour + 8 * 3600) // 3600) % 24
        n = _poisson(rng, per_hour * HOURLY[local_hour] / mean_profile)
        mix = dict(_MIX)
        if in_heating_season(hour):
            mix[C.HEATING] = 6
        times = sorted(rng.randrange(hour, hour + 3600) for _ in range(n))
        cats, weights = list(mix), list(mix.values())
        for i, t in enumerate(times):
            street = rng.choice(streets)
            cat = rng.choices(cats, weights)[0]
            call = make_call(rng, t, cat, street, ticket_id(seed, f"bg{hour}", i, t))
            if start <= t < end:
                yield call


def datetime_of(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)
