//! The names a tokenizer reads: the files of a model folder, and GPT-2's end of text.

/// GPT-2's end of text: the EOS of a trained tokenizer (id 0), and of a model folder that
/// names none (see the module docs).
pub const EOS: &str = "<|endoftext|>";

/// The tokenizer file of a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer settings of a model folder (special tokens, BOS).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The generation settings of a model folder (stop ids, padding).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The model configuration of a model folder.
pub const MODEL_CONFIG_FILE: &str = "config.json";
