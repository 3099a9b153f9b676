//! The model's tokenizer, built from the GGUF metadata: byte-level BPE (`tokenizer.ggml.model =
//! gpt2`) with SmolLM2's pre-tokenizer (`pre = smollm`: every digit split off, then the GPT-2
//! byte-level split, no leading space added). The BOS token is not added here: callers put it
//! at the start of each context themselves.

use super::gguf::GgufFile;
use super::LmError;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

/// GGUF token type of control tokens (`<|endoftext|>`, `<|im_start|>` …).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// A byte-level BPE tokenizer with the model's special token ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: u32,
    pub eos: u32,
    pub vocab_size: usize,
}

fn tk_err(e: impl std::fmt::Display) -> LmError {
    LmError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, LmError> {
        let model = g.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LmError::Unsupported {
                path: g.path.clone(),
                what: format!("tokenizer model `{model}` (only byte-level BPE `gpt2`)"),
            });
        }
        let pre = g
            .string("tokenizer.ggml.pre")
            .unwrap_or_else(|_| "gpt2".into());
        let split_digits = match pre.as_str() {
            "smollm" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(LmError::Unsupported {
                    path: g.path.clone(),
                    what: format!("tokenizer pre-type `{other}` (supported: smollm, gpt2)"),
                })
            }
        };
        if let Some(v) = g.content.metadata.get("tokenizer.ggml.add_space_prefix") {
            if v.to_bool().unwrap_or(false) {
                return Err(LmError::Unsupported {
                    path: g.path.clone(),
                    what: "tokenizer.ggml.add_space_prefix = true".into(),
                });
            }
        }
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = g
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tk_err(format!("malformed merge `{m}`")))
            })
            .collect::<Result<_, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tk_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Ok(types) = g.ints("tokenizer.ggml.token_type") {
            let specials: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(&ty, _)| ty == TOKEN_TYPE_CONTROL)
                .map(|(_, t)| AddedToken::from(t.clone(), true))
                .collect();
            inner.add_special_tokens(specials).map_err(tk_err)?;
        }
        let id = |key: &str| -> Result<u32, LmError> {
            let v = g.usize(key)?;
            if v >= tokens.len() {
                return Err(tk_err(format!("{key} = {v} outside the vocabulary")));
            }
            Ok(v as u32)
        };
        Ok(Tokenizer {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            vocab_size: tokens.len(),
            inner,
        })
    }

    /// Token ids of a text (no BOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LmError> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// Token strings (byte-level form, e.g. `Ġworld`) of a text.
    pub fn encode_tokens(&self, text: &str) -> Result<Vec<String>, LmError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tk_err)?
            .get_tokens()
            .to_vec())
    }

    /// Text of a sequence of ids (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LmError> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// Readable text of one token (`Ġworld` -> ` world`).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }
}
