//! The device's face: an emoji that opens the model's answer names the emotion the device
//! shows (`llm` message); the emoji itself is not spoken.

/// An emoji that opens the answer, as the device's emotion name, and the text after it.
pub(super) fn leading_emotion(text: &str) -> Option<(&'static str, &str)> {
    const FACES: &[(&str, &str)] = &[
        ("😂", "laughing"),
        ("😆", "funny"),
        ("😭", "crying"),
        ("😢", "sad"),
        ("😠", "angry"),
        ("😡", "angry"),
        ("😍", "loving"),
        ("😳", "embarrassed"),
        ("😲", "surprised"),
        ("😮", "surprised"),
        ("😱", "shocked"),
        ("🤔", "thinking"),
        ("😉", "winking"),
        ("😎", "cool"),
        ("😌", "relaxed"),
        ("🤤", "delicious"),
        ("😘", "kissy"),
        ("😏", "confident"),
        ("😴", "sleepy"),
        ("😜", "silly"),
        ("🙄", "confused"),
        ("😊", "happy"),
        ("😀", "happy"),
        ("😄", "happy"),
        ("🙂", "happy"),
        ("😶", "neutral"),
    ];
    let trimmed = text.trim_start();
    FACES.iter().find_map(|(emoji, name)| {
        trimmed.strip_prefix(emoji).map(|rest| (*name, rest.trim_start_matches('\u{fe0f}').trim_start()))
    })
}
