//! Resource ids: UUIDv7, so ids sort by creation time (which keeps cursor pagination
//! stable), each wrapped in its own type so a connection id is never taken for a key's.

use uuid::Uuid;

use super::ParseError;

/// An id that names one kind of resource; `RESOURCE` is how errors name it.
pub trait ResourceId: Sized + Copy {
    const RESOURCE: &'static str;
    fn parse(input: &str) -> Result<Self, ParseError>;
}

macro_rules! resource_id {
    ($(#[$doc:meta])* $name:ident, $resource:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn parse(input: &str) -> Result<Self, ParseError> {
                Uuid::try_parse(input)
                    .map(Self)
                    .map_err(|_| ParseError::new("must be a UUID"))
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl ResourceId for $name {
            const RESOURCE: &'static str = $resource;

            fn parse(input: &str) -> Result<Self, ParseError> {
                $name::parse(input)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

resource_id!(
    /// One connection (a linked Seller or Vendor Central account).
    ConnectionId,
    "connection"
);
resource_id!(
    /// One API key.
    ApiKeyId,
    "API key"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_uuids_and_print_back() {
        let id = ConnectionId::generate();
        assert_eq!(ConnectionId::parse(&id.to_string()), Ok(id));
        assert_eq!(
            ApiKeyId::parse("not-a-uuid").unwrap_err().0,
            "must be a UUID"
        );
        // Generated later, sorted later: cursors rely on it.
        let later = ConnectionId::generate();
        assert!(later > id);
    }
}
