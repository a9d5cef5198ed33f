//! What the fuzz targets share: fixed signing keys (made once per process, so that the
//! targets can sign what they fuzz and still reach the code behind the signature check),
//! the fixed clock they run at, and the encoders the seed generator uses.

use std::sync::LazyLock;

use ed25519_dalek::{Signer as _, SigningKey};
use vigil_shared::agent_auth::{AgentKey, AgentPublicKey};
use vigil_shared::bundle::{BundleKeys, PublicKey};

pub mod seeds;

/// The coordinator's clock in every target: 2027-01-15, epoch ms.
pub const NOW_MS: i64 = 1_800_000_000_000;

/// The host the agent-side targets run as.
pub const HOST: &str = "web-01";

/// The fixed seed of the agent key (any 32 bytes make a key).
const AGENT_SEED: [u8; 32] = [7; 32];
/// The fixed seed of the coordinator's bundle and command key.
const COORDINATOR_SEED: [u8; 32] = [9; 32];

/// The agent's key: its private half signs arbitrary seal bytes, its public half is
/// what the coordinator checks them with.
pub struct AgentKeys {
    /// Signs raw bytes (what `Sealer` does with a postcard-encoded seal).
    pub signing: SigningKey,
    /// The same key as `vigil-shared` reads it.
    pub key: AgentKey,
    /// Its public key, as enrolled.
    pub public: AgentPublicKey,
}

impl AgentKeys {
    /// The agent's ed25519 signature over `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.signing.sign(bytes).to_bytes().to_vec()
    }
}

/// The agent key every target uses.
pub static AGENT: LazyLock<AgentKeys> = LazyLock::new(|| {
    let hex = hex::encode(AGENT_SEED);
    let key = AgentKey::from_hex(&hex).expect("a 32-byte seed is a key");
    let public = AgentPublicKey::from_hex(&key.public_hex()).expect("its own public key");
    AgentKeys {
        signing: SigningKey::from_bytes(&AGENT_SEED),
        key,
        public,
    }
});

/// The coordinator's key pair (bundles and commands).
pub struct CoordinatorKeys {
    /// Signs bundles and commands.
    pub keys: BundleKeys,
    /// What agents verify with.
    pub public: PublicKey,
}

/// The coordinator key every target uses. `BundleKeys` is read from a key file only, so
/// the fixed key is written to a temporary file once.
pub static COORDINATOR: LazyLock<CoordinatorKeys> = LazyLock::new(|| {
    let path = std::env::temp_dir().join(format!("vigil-fuzz-key-{}", std::process::id()));
    std::fs::write(&path, hex::encode(COORDINATOR_SEED)).expect("write the key file");
    let keys = BundleKeys::load(&path).expect("read the key file");
    let _ = std::fs::remove_file(&path);
    let public = PublicKey::from_hex(&keys.public_hex()).expect("its own public key");
    CoordinatorKeys { keys, public }
});

/// Splits off the first byte (the mode selector of several targets).
pub fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}
