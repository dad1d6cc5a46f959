from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "anonymous_id", "device_id", "name", "timestamp_ms", "channel", "device_type", "feature", "step_id", "decision_id", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    anonymous_id: str
    device_id: str
    name: str
    timestamp_ms: int
    channel: str
    device_type: str
    feature: str
    step_id: str
    decision_id: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ..., device_id: _Optional[str] = ..., name: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., channel: _Optional[str] = ..., device_type: _Optional[str] = ..., feature: _Optional[str] = ..., step_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DropCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class IngestSummary(_message.Message):
    __slots__ = ("received", "accepted", "duplicates", "dropped", "outside_window")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    received: int
    accepted: int
    duplicates: int
    dropped: _containers.RepeatedCompositeFieldContainer[DropCount]
    outside_window: int
    def __init__(self, received: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[DropCount, _Mapping]]] = ..., outside_window: _Optional[int] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("sequence", "events")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, sequence: _Optional[int] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "event_id", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("sequence", "accepted", "duplicates", "dropped", "rejected", "outside_window")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: int
    duplicates: int
    dropped: _containers.RepeatedCompositeFieldContainer[DropCount]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    outside_window: int
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[DropCount, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ..., outside_window: _Optional[int] = ...) -> None: ...

class NextStepRequest(_message.Message):
    __slots__ = ("user_id", "anonymous_id", "surface", "context", "timestamp_ms")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    surface: str
    context: _containers.ScalarMap[str, str]
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ..., surface: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("id", "title", "channel", "kind", "feature")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    channel: str
    kind: str
    feature: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., channel: _Optional[str] = ..., kind: _Optional[str] = ..., feature: _Optional[str] = ...) -> None: ...

class NextStepResponse(_message.Message):
    __slots__ = ("decision_id", "step", "has_step", "propensity", "reason", "policy_version", "experiment", "arm", "segments")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HAS_STEP_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    step: Step
    has_step: bool
    propensity: float
    reason: str
    policy_version: str
    experiment: str
    arm: str
    segments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision_id: _Optional[str] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., has_step: _Optional[bool] = ..., propensity: _Optional[float] = ..., reason: _Optional[str] = ..., policy_version: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., segments: _Optional[_Iterable[str]] = ...) -> None: ...

class OutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "reward", "outcome", "timestamp_ms")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reward: float
    outcome: str
    timestamp_ms: int
    def __init__(self, decision_id: _Optional[str] = ..., reward: _Optional[float] = ..., outcome: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class OutcomeResponse(_message.Message):
    __slots__ = ("recorded", "duplicate")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    duplicate: bool
    def __init__(self, recorded: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ConsentRequest(_message.Message):
    __slots__ = ("user_id", "anonymous_id", "purpose", "granted", "source", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    purpose: str
    granted: bool
    source: str
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ..., purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ConsentRecord(_message.Message):
    __slots__ = ("purpose", "granted", "source", "timestamp_ms")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    granted: bool
    source: str
    timestamp_ms: int
    def __init__(self, purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class ConsentState(_message.Message):
    __slots__ = ("subject", "consents")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    consents: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    def __init__(self, subject: _Optional[str] = ..., consents: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ...) -> None: ...

class EraseUserRequest(_message.Message):
    __slots__ = ("user_id", "anonymous_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ...) -> None: ...

class EraseUserResponse(_message.Message):
    __slots__ = ("deleted",)
    class DeletedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.ScalarMap[str, int]
    def __init__(self, deleted: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ExportUserDataRequest(_message.Message):
    __slots__ = ("user_id", "anonymous_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ...) -> None: ...

class IdentityLink(_message.Message):
    __slots__ = ("kind", "alias", "user_id", "linked_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LINKED_MS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    alias: str
    user_id: str
    linked_ms: int
    def __init__(self, kind: _Optional[str] = ..., alias: _Optional[str] = ..., user_id: _Optional[str] = ..., linked_ms: _Optional[int] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "timestamp_ms", "step_id", "propensity", "reason", "policy_version", "experiment", "arm", "details_json")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    timestamp_ms: int
    step_id: str
    propensity: float
    reason: str
    policy_version: str
    experiment: str
    arm: str
    details_json: str
    def __init__(self, decision_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., step_id: _Optional[str] = ..., propensity: _Optional[float] = ..., reason: _Optional[str] = ..., policy_version: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class OutcomeRecord(_message.Message):
    __slots__ = ("decision_id", "reward", "source", "outcome", "timestamp_ms")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reward: float
    source: str
    outcome: str
    timestamp_ms: int
    def __init__(self, decision_id: _Optional[str] = ..., reward: _Optional[float] = ..., source: _Optional[str] = ..., outcome: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class UserDataExport(_message.Message):
    __slots__ = ("subject", "links", "consents", "events", "profile", "decisions", "outcomes")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    subject: str
    links: _containers.RepeatedCompositeFieldContainer[IdentityLink]
    consents: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    profile: UserProfile
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    outcomes: _containers.RepeatedCompositeFieldContainer[OutcomeRecord]
    def __init__(self, subject: _Optional[str] = ..., links: _Optional[_Iterable[_Union[IdentityLink, _Mapping]]] = ..., consents: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., profile: _Optional[_Union[UserProfile, _Mapping]] = ..., decisions: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[OutcomeRecord, _Mapping]]] = ...) -> None: ...

class GetUserProfileRequest(_message.Message):
    __slots__ = ("user_id", "anonymous_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    anonymous_id: str
    def __init__(self, user_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("subject", "links", "first_seen_ms", "last_seen_ms", "event_count", "sessions", "features_used", "channels", "device_types", "screens_skipped", "tutorials_completed", "steps_completed", "steps_dismissed", "segments", "features", "consents")
    class FeaturesUsedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ChannelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DeviceTypesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_USED_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPES_FIELD_NUMBER: _ClassVar[int]
    SCREENS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TUTORIALS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STEPS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STEPS_DISMISSED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    links: _containers.RepeatedCompositeFieldContainer[IdentityLink]
    first_seen_ms: int
    last_seen_ms: int
    event_count: int
    sessions: int
    features_used: _containers.ScalarMap[str, int]
    channels: _containers.ScalarMap[str, int]
    device_types: _containers.ScalarMap[str, int]
    screens_skipped: int
    tutorials_completed: int
    steps_completed: _containers.RepeatedScalarFieldContainer[str]
    steps_dismissed: _containers.RepeatedScalarFieldContainer[str]
    segments: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.ScalarMap[str, float]
    consents: _containers.RepeatedCompositeFieldContainer[ConsentRecord]
    def __init__(self, subject: _Optional[str] = ..., links: _Optional[_Iterable[_Union[IdentityLink, _Mapping]]] = ..., first_seen_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., event_count: _Optional[int] = ..., sessions: _Optional[int] = ..., features_used: _Optional[_Mapping[str, int]] = ..., channels: _Optional[_Mapping[str, int]] = ..., device_types: _Optional[_Mapping[str, int]] = ..., screens_skipped: _Optional[int] = ..., tutorials_completed: _Optional[int] = ..., steps_completed: _Optional[_Iterable[str]] = ..., steps_dismissed: _Optional[_Iterable[str]] = ..., segments: _Optional[_Iterable[str]] = ..., features: _Optional[_Mapping[str, float]] = ..., consents: _Optional[_Iterable[_Union[ConsentRecord, _Mapping]]] = ...) -> None: ...
