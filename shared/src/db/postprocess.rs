//! Rows post-processing touches: storyboard clips, characters, scenes, the user library, and the record of
//! finished steps (`job_postprocessing`).

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

pub async fn fail_storyboard_clip<C: GenericClient>(
    client: &C,
    clip_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "UPDATE public.storyboard_clips SET status = 'failed', updated_at = now() WHERE id = $1",
            &[(&clip_id, Type::UUID)],
        )
        .await?;
    Ok(())
}
